"""Does the dataset's tokenizer fit the model's vocabulary? Checked before training starts.

An id at or above the model's ``vocab_size`` would crash the embedding
lookup mid-run, so a tokenizer with more ids than the model has rows is an
error, and so is any id in the data at or above it. A tokenizer with fewer
ids than the model is legitimate when the vocabulary was padded to a round
size (neox's 50277 ids in a 50304- or 50432-row model): up to
:data:`PADDING_ROWS` - 1 unused rows pass silently; more mean the model was
most likely made for another tokenizer, which is said once as a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rwkv_plug.core.errors import ConfigError

#: A model with at least this many more rows than the tokenizer has ids gets a warning.
PADDING_ROWS = 1024


def dataset_record(data_path: str | Path) -> tuple[str | None, int | None, int | None]:
    """``(data.tokenizer, its vocab size, the largest id in the data)`` as the data build
    recorded them; each None where not recorded (an older or unreadable record)."""
    from rwkv_plug.data.store import read_meta

    meta = read_meta(Path(data_path).expanduser()) or {}
    tok = (meta.get("parts") or {}).get("tokenizer") or {}
    spec, size = tok.get("spec"), tok.get("vocab_size")
    splits = ((meta.get("summary") or {}).get("splits") or {}).values()
    tops = [s.get("max_id") for s in splits if isinstance(s, dict) and s.get("samples")]
    top = max(tops) if tops and all(isinstance(t, int) and t >= 0 for t in tops) else None
    return (str(spec) if spec is not None else None), (size if isinstance(size, int) else None), top


def max_token_id(dataset: Mapping[str, Any]) -> int | None:
    """The largest ``input_ids`` value over all splits (``None`` for no tokens)."""
    import pyarrow.compute as pc

    top = None
    for split in dataset.values():
        column = split.data.column("input_ids")
        found = pc.max(pc.list_flatten(column)).as_py() if len(column) else None
        if found is not None and (top is None or found > top):
            top = found
    return top


def check_tokenizer_fits(data_cfg: Mapping[str, Any], model_vocab: int, model_file: str) -> None:
    """Before the data is built: refuse a tokenizer with more ids than the model has rows.

    The tokenizer is loaded here once; the build reuses it (``load_tokenizer`` caches).
    """
    from rwkv_plug.data.options import as_data_config
    from rwkv_plug.data.tokenizer import load_tokenizer

    data_cfg = as_data_config(data_cfg)
    spec = str(data_cfg.tokenizer)
    tok_vocab = load_tokenizer(spec, data_cfg).vocab_size
    if tok_vocab > model_vocab:
        raise _too_many_ids(spec, tok_vocab, model_vocab, model_file)


def _too_many_ids(spec: str, tok_vocab: int, model_vocab: int, model_file: str) -> ConfigError:
    named = spec if spec in ("neox", "world") else str(tok_vocab)
    return ConfigError(
        f"data.tokenizer '{spec}' has {tok_vocab} ids but model.load_model '{model_file}' has "
        f"vocab_size {model_vocab}; use a model initialised with `rwkv-plug init-model --vocab_size "
        f"{named}`, or the tokenizer this model was made for"
    )


def check_vocab(data_cfg: Mapping[str, Any], dataset: Mapping[str, Any], model_vocab: int,
                model_file: str, log: Callable[[str], None] = print) -> None:
    """Raise ``ConfigError`` if an id can reach past the model's rows; warn on a clear mismatch."""
    from rwkv_plug.data.options import as_data_config

    data_cfg = as_data_config(data_cfg)
    spec, tok_vocab, top = dataset_record(data_cfg.data_path)
    spec = spec or str(data_cfg.tokenizer)
    if tok_vocab is not None and tok_vocab > model_vocab:
        raise _too_many_ids(spec, tok_vocab, model_vocab, model_file)
    if top is None:  # not recorded: one pass over the ids
        top = max_token_id(dataset)
    if top is not None and top >= model_vocab:
        raise ConfigError(
            f"the dataset at {data_cfg['data_path']} holds token id {top} but model.load_model "
            f"'{model_file}' has vocab_size {model_vocab}; rebuild the data with the model's tokenizer "
            "or use a model with a larger vocabulary"
        )
    if tok_vocab is not None and model_vocab - tok_vocab >= PADDING_ROWS:
        log(
            f"warning: data.tokenizer '{spec}' has {tok_vocab} ids but model.load_model '{model_file}' "
            f"has vocab_size {model_vocab}, so {model_vocab - tok_vocab} rows will never be trained; "
            "was the model made for another tokenizer? (see docs/training.md, Vocabulary)"
        )
