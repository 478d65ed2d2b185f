"""A decoder that runs the forward pass in llama.cpp, for batch-1 generation on CPUs.

Why: a 135M model at batch 1 spends its step in ~450 small torch kernels (eager fp32: ~30 tokens/s here);
llama.cpp runs the same step as a few fused, quantized kernels (~100 tokens/s, docs/PERFORMANCE.md). Only the
forward pass moves: prompts, the chat template, sampling (``quill.decoding.sampling``), stop tokens and
streaming stay quill's, so every backend answers the same way for the same logits.

The checkpoint is exported once to GGUF (``quill.models.gguf_export``, cached by content hash + quant type)
and opened with ``llama_cpp.Llama``. ``prefill`` runs the prompt through ``Llama.eval``; ``step`` decodes one
token through its own one-token ``llama_batch`` (less Python per token than ``eval``). Both return the last
position's logits as a [1, vocab] fp32 tensor that *aliases llama.cpp's logits buffer* (no copy): it is valid
until the next call, which is how the engine uses it (the sampler may modify it in place).

``llama-cpp-python`` is an optional dependency (the ``bench`` extra); ``available()`` says whether it can be
used, and ``Engine.load`` falls back to the torch decoder with a message naming the missing package.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from quill.errors import QuillError
from quill.models.gguf_export import ARCHITECTURES, QUANT_TYPES, export_gguf

log = logging.getLogger(__name__)

BACKENDS = ("torch", "llama.cpp", "auto")
DEFAULT_QUANT = "q8_0"
QUANT_ALIASES = {"none": "f32", "int8": "q8_0"}  # the torch backend's names, mapped to GGUF types
_FIRST_CTX = 2048  # KV-cache positions reserved up front; a longer generation reopens a larger context


class BackendUnavailable(QuillError, RuntimeError):
    """The llama.cpp backend was asked for but cannot run here (package missing, architecture unsupported)."""


def available() -> bool:
    """Whether llama-cpp-python imports (its shared library included); only asked when a backend needs it."""
    try:
        import llama_cpp  # noqa: F401 - lazy: an optional dependency that may be missing
    except Exception:  # noqa: BLE001 - missing package, or a build whose library does not load
        return False
    return True


def cpu_threads() -> int:
    """Cores this process may run on (llama.cpp spins one thread per core; more only waits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gguf_quant(quantize: str | None) -> str:
    """``quantize`` as a GGUF type: None -> q8_0 (near-lossless, 4x less to read than fp32), ``none`` -> f32,
    ``int8`` -> q8_0, else one of ``quill.models.gguf_export.QUANT_TYPES``."""
    quant = QUANT_ALIASES.get(quantize or DEFAULT_QUANT, quantize or DEFAULT_QUANT)
    if quant not in QUANT_TYPES:
        raise QuillError(f"quantize: {quantize!r} is not a llama.cpp weight type (use {', '.join(QUANT_TYPES)})")
    return quant


class LlamaCppDecoder:
    """``prefill(ids, total)`` / ``step(token)`` over a llama.cpp context (batch 1, one sequence)."""

    kind = "llama.cpp"

    def __init__(self, model_path: str | Path, context_length: int, n_vocab: int, threads: int | None = None):
        import llama_cpp  # lazy: an optional dependency (the ``llama`` extra), imported only when used
        self._lib = llama_cpp
        self.model_path, self.context_length, self.n_vocab = str(model_path), int(context_length), int(n_vocab)
        self.threads = threads or cpu_threads()
        self.llm = None
        self.n_ctx = 0
        self.pos = 0
        self._batch = llama_cpp.llama_batch_init(1, 0, 1)
        self._open(min(self.context_length, _FIRST_CTX))

    def _open(self, n_ctx: int) -> None:
        if self.llm is not None:  # free the previous context first
            self.llm.close()
            self.llm = None
        self.llm = self._lib.Llama(model_path=self.model_path, n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                                   n_threads=self.threads, n_threads_batch=self.threads,
                                   verbose=False)
        if self.llm.n_vocab() != self.n_vocab:
            raise BackendUnavailable(f"{self.model_path}: llama.cpp sees {self.llm.n_vocab()} tokens, the model "
                                     f"{self.n_vocab}")
        self.n_ctx = n_ctx

    def _logits(self) -> torch.Tensor:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(1, self.n_vocab)))

    def prefill(self, ids: torch.Tensor, total: int | None = None) -> torch.Tensor:
        """``total``: prompt + the most tokens this generation may add; beyond the open context, a larger one
        (up to the model's context length) is opened first."""
        prompt = [int(t) for t in ids.reshape(-1).tolist()]
        need = max(len(prompt), total or 0)
        if need > self.n_ctx:
            self._open(min(self.context_length, max(need, 2 * self.n_ctx)))
        self.llm.reset()
        self.llm.eval(prompt)
        self.pos = len(prompt)
        return self._logits()

    def step(self, token: int) -> torch.Tensor:
        if self.pos >= self.n_ctx:  # the engine's budget keeps generations inside the context
            raise RuntimeError("llama.cpp context full")
        b = self._batch
        b.n_tokens = 1
        b.token[0] = token
        b.pos[0] = self.pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = True
        rc = self._lib.llama_decode(self.llm.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.pos += 1
        return self._logits()

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def unsupported_reason(model) -> str | None:
    """Why this model cannot use the llama.cpp backend, or None when it can."""
    if not available():
        return "llama-cpp-python is not installed (pip install 'quill[llama]' or pip install llama-cpp-python)"
    if next(model.parameters()).device.type != "cpu":
        return "the model is on a GPU (the llama.cpp backend here runs on the CPU)"
    kind = getattr(model.config, "model_type", "?")
    if kind not in ARCHITECTURES:
        return f"{kind!r} models cannot be exported to GGUF here (supported: {', '.join(ARCHITECTURES)})"
    return None


def make_llamacpp_decoder(model, tokenizer, context_length: int, quantize: str | None = None,
                          name: str = "model") -> LlamaCppDecoder:
    """Export (or reuse the cached export of) ``model`` at ``quantize`` and open it in llama.cpp."""
    reason = unsupported_reason(model)
    if reason:
        raise BackendUnavailable(f"{name}: llama.cpp backend unavailable: {reason}")
    path = export_gguf(model, tokenizer, gguf_quant(quantize), name=name)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    return LlamaCppDecoder(path, context_length, n_vocab)


def check_backend(backend: str, quantize: str | None) -> str:
    """Validate a backend name and, for llama.cpp / auto, the weight type (before any model is loaded)."""
    if backend not in BACKENDS:
        raise QuillError(f"backend: unknown {backend!r} (use {', '.join(BACKENDS)})")
    if backend != "torch":
        gguf_quant(quantize)
    return backend


def pick_decoder(model, tokenizer, context_length: int, backend: str, quantize: str | None,
                 name: str) -> tuple[LlamaCppDecoder | None, str | None]:
    """(a llama.cpp decoder or None for torch's, the ``quantize`` left for the torch backend). ``auto`` and
    ``llama.cpp`` fall back to torch when llama.cpp cannot run (``llama.cpp`` says why in a warning); a GGUF
    type then becomes torch's nearest scheme (q* -> int8, f32/f16 -> none)."""
    if backend == "torch":
        return None, quantize
    reason = unsupported_reason(model)
    if reason is None:
        return make_llamacpp_decoder(model, tokenizer, context_length, quantize, name=name), None
    if quantize not in (None, "none", "int8"):
        quantize = "none" if quantize in ("f32", "f16") else "int8"
    if backend == "llama.cpp":
        log.warning("%s: llama.cpp backend unavailable (%s); using torch%s", name, reason,
                    " with int8 weights" if quantize == "int8" else "")
    return None, quantize
