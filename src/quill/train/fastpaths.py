"""The training fast paths ``auto`` turns on where the hardware allows: compiled blocks, packed attention.

**Regional compilation.** ``torch.compile`` on the repeated transformer block rather than the whole model
is PyTorch's recipe for transformers: every layer runs the same code, so one compilation serves all of
them (~20 s for SmolLM2 on a 2-core CPU), while the loss, the batch bookkeeping and the optimizer stay
eager. It fuses the element-wise work (norms, rotary, activations, LoRA scaling and dropout) and keeps
fewer intermediates alive; measured on SmolLM2-135M, LoRA, 2×512 tokens on the CPU: ~1.3× faster steps
and ~1.5 GB less memory (docs/PERFORMANCE.md). The compiled forward runs only while gradients are on
(training micro-batches): evaluation and generation samples keep the eager one, so their shapes and KV
caches trigger no recompilation. If compiling fails, dynamo falls back to eager with a warning.

**LoRA dropout on CPUs.** Inside compiled blocks on a CPU, each LoRA dropout moves into its ``A``
projection with hashed masks recomputed in the backward pass (``quill.train.dropout``): ATen's Bernoulli
masks made dropout 0.05 cost ~45% of a step and 0.7 GB; hashed, ~5% and nothing. Every compiled micro-batch is
padded to one shape by ``fit``, so the short last one does not recompile the block.

**Packed attention on GPUs.** Packed examples must not see each other. With ``attention_mask=None`` and
restarting ``position_ids`` transformers builds a block-diagonal mask; for SDPA that is a dense mask,
which rules out the flash kernel. Flex attention takes it as a block-sparse ``BlockMask`` and skips the
blocks between examples; on an H200 it took the 1.3B shape from 15k to 27k tokens/s at batch 2×4
together with compilation (docs/PERFORMANCE.md). CUDA only (flex attention has no CPU backward) and only
for architectures transformers supports it on (Llama-style yes, GPT-2 no: those keep SDPA). On CPUs a
per-example SDPA saved attention time but lost as much to the graph break it needs (measured, not kept).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import shutil

import torch
from torch import nn

from quill.train.dropout import fuse_lora_dropout, unfuse_lora_dropout
from quill.train.loss import hf_model

log = logging.getLogger(__name__)
MIN_MICRO_BATCHES = 64  # ``auto`` on a CPU: below this the ~20 s compile costs more than it saves


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the classes a transformers model lists in ``_no_split_modules``."""
    hf = hf_model(model)
    names = set(getattr(hf, "_no_split_modules", None) or [])
    return [m for m in hf.modules() if type(m).__name__ in names]


def should_compile(setting: str, device: torch.device, micro_batches: int) -> bool:
    if setting in ("on", "off"):
        return setting == "on"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and micro_batches >= MIN_MICRO_BATCHES and shutil.which("g++") is not None


class _TrainingOnly:
    """A block's ``forward``: the compiled one while gradients are on, else the original."""

    def __init__(self, eager, compiled):
        self.eager, self.compiled = eager, compiled

    def __call__(self, *args, **kwargs):
        return (self.compiled if torch.is_grad_enabled() else self.eager)(*args, **kwargs)


def compile_blocks(model: nn.Module) -> int:
    """Compile each repeated block's forward for training; returns how many blocks were wrapped."""
    import torch._dynamo
    import torch._inductor.config as inductor
    torch._dynamo.config.suppress_errors = True  # a failed compile runs eager (with a warning), not a crash
    # ATen's vectorised Bernoulli is cheaper on CPU than inductor's per-element Philox (LoRA dropout masks)
    inductor.fallback_random = True
    blocks = [b for b in repeated_blocks(model) if not isinstance(b.forward, _TrainingOnly)]
    for block in blocks:
        block.forward = _TrainingOnly(block.forward, torch.compile(block.forward))
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    for block in repeated_blocks(model):
        if isinstance(block.forward, _TrainingOnly):
            block.forward = block.forward.eager


def release_freed_memory(device: torch.device) -> None:
    """On a CPU, hand the memory freed by the last micro-batch back to the system (glibc ``malloc_trim``).
    glibc keeps freed blocks in its heaps, and the next step's differently sized tensors fragment them:
    SmolLM2 LoRA training grew from 2.5 to 3.4 GB of RSS over two steps without this, 2.6 with it, for
    ~10% of step time (re-faulting the pages; measured 298 vs 335 tokens/s). No-op elsewhere (other C libraries, CUDA's allocator)."""
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def packed_attention(model: nn.Module, setting: str, device: torch.device, packing: bool) -> str | None:
    """Switch packed training to flex attention where ``setting`` is ``auto`` and it can run; returns the
    implementation to restore afterwards (None: nothing changed)."""
    hf = hf_model(model)
    current = getattr(hf.config, "_attn_implementation", None)
    if setting != "auto" or not packing or device.type != "cuda" or current != "sdpa":
        return None
    try:
        hf.set_attn_implementation("flex_attention")
    except (ValueError, ImportError) as err:  # architecture without flex support: SDPA with the dense mask
        log.info("flex attention unavailable for %s (%s); packed blocks use SDPA", type(hf).__name__,
                 str(err).splitlines()[0])
        return None
    return current


@contextlib.contextmanager
def training_fast_paths(model: nn.Module, *, compile_setting: str, attention: str, device: torch.device,
                        packing: bool, micro_batches: int):
    """Turn the fast paths on for a stage's training and off afterwards; yields what is on."""
    on = {"compiled_blocks": 0, "attention": getattr(hf_model(model).config, "_attn_implementation", None)}
    restore = packed_attention(model, attention, device, packing)
    if restore:
        on["attention"] = "flex_attention"
    fused = []
    if should_compile(compile_setting, device, micro_batches):
        on["compiled_blocks"] = compile_blocks(model)
        if device.type == "cpu":  # CUDA's dropout is already fused Philox in compiled code
            fused = fuse_lora_dropout(model)
            on["hashed_lora_dropout"] = len(fused)
    try:
        yield on
    finally:
        unfuse_lora_dropout(fused)
        uncompile_blocks(model)
        if restore:
            hf_model(model).set_attn_implementation(restore)
