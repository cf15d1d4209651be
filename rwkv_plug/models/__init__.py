"""RWKV architectures (v5 and v7), model files, and their commands.

``load_model`` is the one entry point the trainer and the CLI use; it picks
the architecture from the registered model plugins by the file's keys.
Importing this package does no work; torch is imported on first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    import torch
    from torch import nn


def load_model(
    path_or_state_dict: "str | os.PathLike | dict[str, torch.Tensor]",
    *,
    kernel: Any = "auto",
    dropout: float = 0.0,
    grad_cp: bool = False,
    dtype: "torch.dtype | str | None" = None,
    dim_att: int | None = None,
    dim_ffn: int | None = None,
) -> "nn.Module":
    """Build the model stored in a ``.pth`` file (or given as a state dict).

    ``dtype`` None means float32 (training keeps fp32 master weights; model
    files are usually bf16). Raises ``ModelError`` when the file is missing,
    unsafe, or matches no registered architecture.
    """
    from rwkv_plug.models.loading import load_model as _load

    return _load(
        path_or_state_dict,
        kernel=kernel,
        dropout=dropout,
        grad_cp=grad_cp,
        dtype=dtype,
        dim_att=dim_att,
        dim_ffn=dim_ffn,
    )


__all__ = ["load_model"]
