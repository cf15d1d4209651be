"""The ``model:`` section of a fit config: types, ranges, rules across keys, the kernel.

Values arrive as YAML wrote them (``3e-4`` may be a string; see
:func:`rwkv_plug.core.option_types.yaml_number`); every problem goes to the
caller's :class:`~rwkv_plug.core.config.Problems`, so the whole file is
reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rwkv_plug.core import notice
from rwkv_plug.core.config import Problems, resolve_options
from rwkv_plug.core.errors import did_you_mean
from rwkv_plug.core.option_types import yaml_number
from rwkv_plug.training import options as O


def number(problems: Problems, key: str, value: Any, kind: type, minimum: float | None = None):
    """YAML 1.1 reads ``3e-4`` as a string; accept numeric strings and check the range."""
    if isinstance(value, bool) or value is None:
        problems.add(f"{key} must be a number, got {value!r}")
        return value
    parsed = yaml_number(value) if isinstance(value, str) else value
    if not isinstance(parsed, (int, float)) or (kind is int and not float(parsed).is_integer()):
        problems.add(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        return value
    parsed = kind(parsed)
    if minimum is not None and parsed < minimum:
        problems.add(f"{key} must be >= {minimum}, got {value!r}")
    return parsed


def boolean(problems: Problems, key: str, value: Any) -> Any:
    """``value`` when it is true or false; else a problem."""
    if not isinstance(value, bool):
        problems.add(f"{key} must be true or false, got {value!r}")
    return value


def _existing_path(value: str, config_dir: Path) -> Path | None:
    """Relative paths are tried from the working directory, then from the config's folder."""
    p = Path(value).expanduser()
    for candidate in ((p,) if p.is_absolute() else (p, config_dir / p)):
        if candidate.exists():
            return candidate
    return None


#: What torch.set_float32_matmul_precision accepts.
_MATMUL_PRECISIONS = ("highest", "high", "medium")


def _check_model(m: dict[str, Any], problems: Problems, config_dir: Path) -> None:
    if m["load_model"] in (None, ""):
        problems.add("model.load_model is required (make a model with `rwkv-plug init-model OUT.pth`)")
    else:
        found = _existing_path(str(m["load_model"]), config_dir)
        if found is None:
            problems.add_missing_file(
                f"model.load_model '{m['load_model']}' does not exist (looked in the working directory "
                f"and in {config_dir}); create it with `rwkv-plug init-model`"
            )
        else:
            m["load_model"] = str(found)
    if m["lr_init"] is None:
        problems.add("model.lr_init is required (e.g. lr_init: 3e-4)")
    else:
        m["lr_init"] = number(problems, "model.lr_init", m["lr_init"], float, 0.0)
    for key, kind, low in (
        ("lr_final", float, None), ("beta1", float, 0.0), ("beta2", float, 0.0), ("adam_eps", float, 0.0),
        ("weight_decay", float, 0.0), ("dropout", float, 0.0), ("ctx_len", int, 1), ("lr_period", int, None),
        ("warmup_steps", int, None), ("bptt_learning_range", int, None), ("n_embd", int, None),
        ("n_layer", int, None), ("vocab_size", int, None), ("dim_att", int, None), ("dim_ffn", int, None),
    ):
        m[key] = number(problems, f"model.{key}", m[key], kind, low)
    for key in ("layerwise_lr", "grad_cp", "bptt_learning", "bptt_truncated_learning",
                "substep_cuda_cache_clear", "substep_logging", "consolidated_logging"):
        boolean(problems, f"model.{key}", m[key])
    if m["lr_period_type"] not in ("epoch", "step"):
        problems.add(f"model.lr_period_type must be 'epoch' or 'step', got {m['lr_period_type']!r}")
    precision = m["torch_set_float32_matmul_precision"]
    if precision is not None and precision not in _MATMUL_PRECISIONS:
        hint = did_you_mean(precision, _MATMUL_PRECISIONS) if isinstance(precision, str) else ""
        problems.add(f"model.torch_set_float32_matmul_precision must be {', '.join(_MATMUL_PRECISIONS)} "
                     f"or null (leave torch's setting), got {precision!r}.{hint}")
    from rwkv_plug.kernels.precision import WKV_PRECISIONS  # imports torch: fit only

    wkv = m["wkv_precision"]
    if wkv not in WKV_PRECISIONS:
        hint = did_you_mean(wkv, WKV_PRECISIONS) if isinstance(wkv, str) else ""
        problems.add(f"model.wkv_precision must be {', '.join(WKV_PRECISIONS)}, got {wkv!r}.{hint}")
    if m["lr_type"] not in ("cosine", "linear"):
        problems.add(f"model.lr_type must be 'cosine' or 'linear', got {m['lr_type']!r}")
    if isinstance(m["warmup_steps"], int) and isinstance(m["lr_period"], int):
        if m["warmup_steps"] > 0 and m["lr_period"] > 0:
            problems.add("model.warmup_steps and model.lr_period cannot both be set (warmup is followed by a constant LR)")
        if m["lr_period"] == 0:
            problems.add("model.lr_period must be > 0, or -1 for the whole run")
    if isinstance(m["lr_final"], float) and m["lr_final"] < 0:
        if m["lr_final"] != -1:
            problems.add(f"model.lr_final must be >= 0, or -1 for lr_init (a constant LR), got {m['lr_final']}")
        m["lr_final"] = m["lr_init"]
    if (isinstance(m["warmup_steps"], int) and m["warmup_steps"] > 0 and isinstance(m["lr_final"], float)
            and isinstance(m["lr_init"], float) and m["lr_final"] != m["lr_init"]):
        notice.warn(f"model.lr_final ({m['lr_final']:g}) is not used: with warmup_steps the LR rises to lr_init "
                    "and stays there, as in the earlier trainer; set lr_final: -1 to silence this")
    if m["bptt_learning"] is False:  # one plain graph: neither option has a meaning there
        if isinstance(m["bptt_learning_range"], int) and m["bptt_learning_range"] > 0:
            problems.add("model.bptt_learning_range applies only with bptt_learning: true; set it to -1 "
                         "or turn bptt_learning on")
        if m["bptt_truncated_learning"] is True:
            problems.add("model.bptt_truncated_learning applies only with bptt_learning: true; set it to "
                         "false or turn bptt_learning on")
    if isinstance(m["dropout"], float) and m["dropout"] >= 1:
        problems.add(f"model.dropout must be < 1, got {m['dropout']}")
    _check_kernel(m["kernel"], problems)
    from rwkv_plug.training.samples import check_sample_options

    check_sample_options(m, problems)
    from rwkv_plug.training.tuning import check_tuning_options

    check_tuning_options(m, problems, lambda value: _existing_path(value, config_dir))


def _check_kernel(name: Any, problems: Problems) -> None:
    """``auto`` or a registered kernel that can run on this machine (device and dtype are checked later)."""
    from rwkv_plug.core import plugins
    from rwkv_plug.core.interfaces import kernel_availability

    if not isinstance(name, str) or not name.strip():
        problems.add(f"model.kernel must be a kernel name or auto, got {name!r}")
        return
    if name.strip().lower() == "auto":
        return
    registry = plugins.kernels()
    if name not in registry:
        names = registry.names()
        problems.add(f"model.kernel: unknown kernel '{name}'.{did_you_mean(name, names)} "
                     f"Available: auto, {', '.join(names)} (rwkv-plug list-kernels)")
        return
    ok, reason = kernel_availability(registry.get(name))
    if not ok:
        problems.add(f"model.kernel '{name}' is not available here: {reason}; "
                     "pick another kernel (rwkv-plug list-kernels) or kernel: auto")


def model_section(raw: Any, problems: Problems, config_dir: Path) -> dict[str, Any]:
    m = resolve_options("model", raw, O.MODEL_OPTIONS, problems, unsupported=O.MODEL_UNSUPPORTED,
                        noop=O.MODEL_NOOP, fixed=O.MODEL_FIXED)
    _check_model(m, problems, config_dir)
    return m
