"""The dtype policy, in one place: which precision a model is loaded, trained and saved in.

``auto`` means bf16 on a GPU that supports it and fp32 everywhere else; names ("bf16", "fp16", "fp32" and
their aliases) and torch dtypes are accepted as they are. A leaf module (torch and ``quill.errors`` only),
so loading and saving can both use it without importing each other.
"""
from __future__ import annotations

from typing import Any

import torch

from quill.errors import ModelError

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype: Any = None) -> torch.dtype:
    """None / "auto": bf16 on a GPU that supports it, else fp32 (CPU bf16 matmuls are slow and fp16 weights
    need loss scaling to train). Also accepts "bf16" / "fp16" / "fp32" and torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ModelError(f"unknown dtype {dtype!r} (use auto, bf16, fp16 or fp32)")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware runs it faster (recent GPUs; CPUs with AMX), else fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    """AMX only: with AVX512-BF16 alone a bf16 matmul peaks at the fp32 rate and, with the conversions,
    runs slower (measured: oneDNN bf16 ~0.55x MKL fp32 on a Xeon without AMX; see docs/PERFORMANCE.md)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "amx_bf16" in flags
