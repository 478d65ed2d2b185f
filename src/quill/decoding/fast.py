"""Decoders: how one token's forward pass is run. The engine only calls ``prefill(ids, total)`` and ``step(token)``.

* ``EagerDecoder`` — the model's own forward over a ``DynamicCache``. Works for every causal LM.
* ``CompiledDecoder`` — a ``StaticCache`` (fixed shapes, so the step graph never changes) and the step
  compiled once with ``torch.compile`` (inductor ``freezing`` so weights can be prepacked). It produces the
  same tokens as eager (checked by the tests on a tiny model).

Measured here (2-core Xeon with AVX512-BF16, SmolLM2-135M, 1 thread, see the report of issue 6): the
compiled step was SLOWER than eager on CPU — 67-70 CPU-ms/token fp32 and ~50 bf16 against 53-56 eager fp32 —
because a 135M model at batch 1 is bound by reading its weights, not by Python overhead, and the static
cache makes every step attend over the whole cache. Compiling also costs 70-90 s. So ``fast="auto"`` means
eager on CPU and compiled on CUDA (where launch overhead dominates and CUDA graphs pay); ``fast="compile"``
or ``QUILL_GEN_COMPILE=1`` forces it, ``QUILL_GEN_COMPILE=0`` forbids it. Any failure to build the compiled
decoder under ``auto`` falls back to eager with one warning, never an error.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)


def inference_dtype(dtype: Any = "auto") -> Any:
    """``auto``: what ``quill.models.resolve_dtype`` picks (bf16 on GPUs, fp32 on CPUs), unless
    ``QUILL_GEN_DTYPE`` says otherwise. On this project's 2-core AVX512-BF16 CPU, bf16 eager decoding was no
    faster than fp32 (its non-matmul ops pay for conversions), so fp32 stays the CPU default; int8 weights
    (``quantize_int8``) are the lever that reads fewer bytes per token."""
    if dtype in (None, "auto"):
        return os.environ.get("QUILL_GEN_DTYPE") or None
    return dtype


class EagerDecoder:
    """The model's forward with a dynamic KV cache; the reference path every other decoder must match."""

    kind = "eager"

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.device = next(model.parameters()).device

    def prefill(self, ids: torch.Tensor, total: int | None = None) -> torch.Tensor:
        from transformers import DynamicCache
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def step(self, token: int) -> torch.Tensor:
        ids = torch.tensor([[token]], device=self.device)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]


class CompiledDecoder:
    """Static KV cache of ``max_len`` positions and a compiled one-token step (batch 1)."""

    kind = "compiled"

    def __init__(self, model, max_len: int):
        from transformers import StaticCache
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # constant weights: lets inductor prepack them for oneDNN
        self.model, self.max_len = model, max_len
        self.device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.position = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = 0
        # CUDA: "reduce-overhead" replays the step as a CUDA graph (the static cache and the token/position
        # buffers keep their addresses; the returned logits are cloned before the next replay)
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._step = torch.compile(self._forward, dynamic=False, mode=mode)
        self.eager = EagerDecoder(model)  # for prompts too long for the static cache
        self.active: Any = self

    def _forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token, position_ids=position, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def prefill(self, ids: torch.Tensor, total: int | None = None) -> torch.Tensor:
        """``total``: prompt + the most tokens this generation may add; longer than the static cache -> eager."""
        n = ids.shape[1]
        if max(n, total or 0) > self.max_len:
            self.active = self.eager
            return self.eager.prefill(ids)
        self.active = self
        self.cache.reset()
        positions = torch.arange(n, device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.pos = n
        return out.logits[:, -1]

    def step(self, token: int) -> torch.Tensor:
        if self.active is not self:
            return self.eager.step(token)
        if self.pos >= self.max_len:  # past the static cache: the caller's budget prevents this
            raise RuntimeError("static cache full")
        self.token.fill_(token)
        self.position.fill_(self.pos)
        self.pos += 1
        return self._step(self.token, self.position).clone()

    def warmup(self) -> None:
        with torch.inference_mode():
            self.prefill(torch.zeros((1, 4), dtype=torch.long, device=self.device))
            for _ in range(3):
                self.step(0)


def make_decoder(model, context_length: int, fast: str | bool = "auto"):
    """``fast``: False / "eager" -> eager; True / "compile" -> compiled (errors raised); "auto" -> compiled on
    CUDA or when ``QUILL_GEN_COMPILE=1``, else eager; a compiled decoder that fails to build under "auto"
    falls back to eager with a warning."""
    env = os.environ.get("QUILL_GEN_COMPILE", "")
    on_gpu = next(model.parameters()).device.type == "cuda"
    if fast in (False, "eager", "off") or (fast == "auto" and not (env == "1" or (on_gpu and env != "0"))):
        return EagerDecoder(model)
    try:
        max_len = min(context_length, int(os.environ.get("QUILL_GEN_MAX_LEN", 1024)))
        decoder = CompiledDecoder(model, max_len=max_len)
        decoder.warmup()
        return decoder
    except Exception as err:  # noqa: BLE001 - any compiler failure means "use the reference path"
        if fast not in ("auto",):
            raise
        log.warning("fast decoding unavailable (%s: %s); using the eager loop", type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return EagerDecoder(model)


# ---------------------------------------------------------------------------- opt-in int8 weights
class Int8Linear(torch.nn.Module):
    """A Linear whose weight is stored as int8 with one scale per output row (symmetric, round to nearest),
    multiplied by ``aten._weight_int8pack_mm``. Why: at batch 1 on a CPU the decode step is bound by reading
    the weights, and int8 reads a quarter of fp32's bytes. Lossy (per-row rounding of 1/254 of the row's
    largest weight), so it is opt-in: ``Engine.load(..., quantize="int8")`` or ``QUILL_GEN_QUANT=int8``."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model) -> int:
    """Replace every ``nn.Linear`` (the LM head included) by an ``Int8Linear`` in place; returns how many.
    CPU only (the kernel is a CPU one); the embedding table stays as it is for lookups."""
    if next(model.parameters()).device.type != "cpu":
        return 0
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(mod))
    return len(targets)
