"""The dtype a kernel computes in for given input dtypes."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, bf16, fp16) computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
