"""LoRA dropout for compiled CPU training: counter-hash masks, recomputed in the backward pass.

peft applies dropout to the input of every LoRA ``A`` projection, so with ``all-linear`` targets SmolLM2
draws ~150k Bernoulli numbers per token. On a CPU, ATen's generator costs ~6 ns each, and autograd keeps
each dropped copy of the input for ``A``'s weight gradient: dropout 0.05 made quill's steps ~45% slower and
0.7 GB bigger (docs/PERFORMANCE.md). Here the mask is a hash of the element's index and two random seeds
(one ATen draw per call), which inductor fuses into the same vectorised loop as the multiply, and the
dropout and ``A`` run under activation checkpointing, so the backward pass recomputes them from the
input and the seed instead of keeping them.

Same p, same scaling (kept elements × 1/(1-p)), independent masks per module and per step, reproducible
under ``torch.manual_seed``; the keep test has 24-bit resolution (p=0.05 → 0.05000001). Used only inside
compiled blocks on a CPU (``fastpaths.training_fast_paths``): eagerly the hash is a dozen separate kernels,
slower than ATen's dropout, so an uncompiled call uses ATen's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_LOW16 = 0xFFFF
_K = 0x45D9F3B
_BITS = 24


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int32: products wrap modulo 2**32 and each
    ``>> 16`` is masked to a logical shift, so the bits are those of the same hash on unsigned 32-bit
    integers. int32 rather than int64 because CPUs without AVX-512 have no 64-bit vector multiply: on an AVX2
    EPYC the int64 version's emulated products were ~12% of a training step (docs/PERFORMANCE.md)."""
    h = (((h >> 16) & _LOW16) ^ h) * _K
    h = (((h >> 16) & _LOW16) ^ h) * _K
    return ((h >> 16) & _LOW16) ^ h


def keep_mask(shape: torch.Size, seed: torch.Tensor, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask of ``shape`` keeping each element with probability 1-p, a function of (index, seed).

    The index wraps modulo 2**32 (int32 arithmetic), so a tensor of more than 2**32 elements would repeat
    its mask; far above any activation quill drops out."""
    n = shape.numel()
    idx = torch.arange(n, device=device, dtype=torch.int32 if n < 2**31 else torch.int64).to(torch.int32).view(shape)
    seed = seed.to(torch.int32)
    h = _mix(_mix(idx + seed[0]) ^ seed[1])
    return (h & ((1 << _BITS) - 1)) >= int(round(p * (1 << _BITS)))


def hashed_dropout(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return x * keep_mask(x.shape, seed, p, x.device).to(x.dtype) * (1.0 / (1.0 - p))


def _dropped_linear(x: torch.Tensor, weight: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return F.linear(hashed_dropout(x, seed, p), weight)


class DroppedLoraA(nn.Module):
    """Stands in for ``lora_A[name]`` (same weight Parameter, same state-dict keys) while the layer's
    ``lora_dropout[name]`` is Identity. A module, not a bound callable, so that one compiled block serves
    every layer (dynamo guards on a callable's identity, not on a module's)."""

    def __init__(self, linear: nn.Linear, p: float):
        super().__init__()
        self.weight, self.bias, self.p = linear.weight, linear.bias, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        if not torch.compiler.is_compiling():  # eager: ATen's dropout is the faster one
            return F.linear(F.dropout(x, self.p, training=True), self.weight, self.bias)
        seed = torch.randint(0, 2**31 - 1, (2,), device=x.device)
        out = checkpoint(_dropped_linear, x, self.weight, seed, self.p, use_reentrant=False)
        return out if self.bias is None else out + self.bias


def fuse_lora_dropout(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """Move each LoRA layer's dropout into its ``A`` projection; returns what ``unfuse_lora_dropout`` needs."""
    fused = []
    for module in list(model.modules()):
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict) or not isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
            continue
        variants = getattr(module, "lora_variant", {}) or {}
        for name, drop in list(drops.items()):
            if not isinstance(drop, nn.Dropout) or drop.p <= 0 or name in variants \
                    or name not in module.lora_A or type(module.lora_A[name]) is not nn.Linear:  # plain LoRA only
                continue
            linear = module.lora_A[name]
            module.lora_A[name] = DroppedLoraA(linear, drop.p).train(linear.training)
            drops[name] = nn.Identity()
            fused.append((module, name, drop, linear))
    return fused


def unfuse_lora_dropout(fused: list[tuple[nn.Module, str, nn.Module, nn.Module]]) -> None:
    for module, name, drop, linear in fused:
        module.lora_dropout[name] = drop
        module.lora_A[name] = linear
