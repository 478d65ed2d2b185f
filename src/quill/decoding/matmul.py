"""Linear layers at decoding's shapes on a CPU: of two equal products, the one measured faster for each shape.

A decode step multiplies a few rows (one per poem of the batch) by every weight matrix. ``F.linear`` computes
``x @ W.T``; the same numbers come out of ``(W @ x.T).T``, which the BLAS runs as a different kernel. On this
project's 2-core AMD EPYC (MKL 2024.2, AVX2) the second was faster at every decoding shape of SmolLM2-135M:
1.1-1.9x for the blocks' matrices at 4-128 rows and 1.4-3.7x for the 49k-row vocabulary projection (see
docs/PERFORMANCE.md, "Batched decoding"). Another CPU or BLAS may rank them the other way, so nothing here
is decided by brand: the first time a (weight shape, rows rounded up to a power of two, dtype) is seen, both
products are timed on that very input and the faster is kept for the rest of the process.

``oriented_linears(model)`` applies this to the model's plain ``nn.Linear`` layers for the length of a
``with`` block (the batch decoder uses it; training never sees it). The two products differ only in float
rounding (about 1e-6 relative), far below anything sampling at temperature 0.7 can tell apart.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

MAX_ROWS = 256            # above this (prefills) both products run the same large-matrix kernel: keep linear
TIMING_RUNS = 3           # timed runs of each product per shape (after one warm-up), the fastest counts
_choice: dict[tuple, bool] = {}   # (out, in, rows bucket, dtype) -> whether (W @ x.T).T was faster


def _bucket(rows: int) -> int:
    return 1 << max(rows - 1, 0).bit_length()


def _flipped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).t()
    out = torch.mm(weight, flat) if bias is None else torch.addmm(bias[:, None], weight, flat)
    return out.t().contiguous().view(*x.shape[:-1], weight.shape[0])


def _fastest(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Time both products on this input; True when the flipped one was faster."""
    best = []
    for fn in (F.linear, _flipped):
        fn(x, weight, bias)
        runs = []
        for _ in range(TIMING_RUNS):
            t = time.perf_counter()
            fn(x, weight, bias)
            runs.append(time.perf_counter() - t)
        best.append(min(runs))
    return best[1] < best[0]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with, for few rows on a CPU, whichever of the two equal products this machine runs faster."""
    rows = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cpu" or rows > MAX_ROWS or rows == 0 or torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    key = (*weight.shape, _bucket(rows), x.dtype)
    flip = _choice.get(key)
    if flip is None:
        flip = _choice[key] = _fastest(x, weight, bias)
    return _flipped(x, weight, bias) if flip else F.linear(x, weight, bias)


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


@contextmanager
def oriented_linears(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the model's plain ``nn.Linear`` layers (not LoRA, quantised or other subclasses) use
    :func:`linear`; yields how many layers that is. Their own ``forward`` comes back on exit."""
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
    for m in layers:
        m.forward = _forward.__get__(m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)
