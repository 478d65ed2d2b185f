"""Write a loaded transformers model and its tokenizer as a GGUF file that llama.cpp can run.

Why: at batch 1 on a CPU, llama.cpp's fused, quantized kernels decode a 135M model ~3x faster than torch's
eager loop (docs/PERFORMANCE.md). quill's checkpoints are safetensors folders, so the llama.cpp backend
(``quill.decoding.llamacpp``) exports them once to GGUF and caches the file.

This is a small, focused version of llama.cpp's ``convert_hf_to_gguf.py`` (the reference; same metadata
keys and tensor conventions) for the architectures quill trains: ``llama`` (SmolLM2, DeepSeek-coder) and
``gpt2``, with byte-level BPE tokenizers. What it copies from the reference:

* tensor names through ``gguf.get_tensor_name_map`` (HF name -> ``blk.N.attn_q.weight`` …);
* Llama's Q/K rows permuted from HF's rotate-half layout to llama.cpp's interleaved RoPE layout;
* GPT-2's ``Conv1D`` weights ([in, out]) transposed to Linear's [out, in];
* 1-D tensors, norms, biases and position embeddings kept in f32; a tied LM head not written (llama.cpp
  reuses the token embedding); with 4/5-bit types the token embedding / output stay q8_0, as in the GGUF
  SmolLM2 is published as (llama.cpp's own quantizer would use q6_K, which ``gguf.quants`` cannot write);
* tokenizer: tokens by id (ids the tokenizer does not use become ``[PADn]``, unused), token types
  (added special tokens are control tokens), merges, special ids, and ``tokenizer.ggml.pre`` found by
  hashing the tokenization of the reference's check text, exactly as the reference does (``quill.models.gguf_vocab``).

The cached file is keyed by a hash of the weights, config and tokenizer plus the quant type, and written
atomically (temp file, then rename).
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Iterator

import gguf
import torch

from quill.errors import ModelError
from quill.files import atomic_path
from quill.models.gguf_vocab import tokenizer_pre, write_tokenizer
from quill.paths import cache_home

log = logging.getLogger(__name__)

EXPORT_VERSION = "1"  # bump when the exporter's output changes, so old cached files are not reused
QUANT_TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")

ARCHITECTURES = {"llama": "LLAMA", "gpt2": "GPT2"}


def _check_quant(quant: str) -> str:
    if quant not in QUANT_TYPES:
        raise ModelError(f"GGUF quant type {quant!r} not supported (use {', '.join(QUANT_TYPES)})")
    return quant


def _arch(model, name: str) -> str:
    kind = getattr(model.config, "model_type", "?")
    if kind not in ARCHITECTURES:
        raise ModelError(f"{name}: cannot export a {kind!r} model to GGUF (supported: {', '.join(ARCHITECTURES)})")
    return kind


def check_exportable(model, tokenizer, name: str = "model") -> None:
    """ModelError (one line naming the architecture or tokenizer) unless ``write_gguf`` can write this model."""
    _arch(model, name)
    tokenizer_pre(tokenizer, name)


# ----------------------------------------------------------------------------- hyperparameters
def _rope(cfg, name: str) -> tuple[float, str, float | None]:
    """(theta, rope type, linear factor) from transformers 5's ``rope_parameters`` or the older fields."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear"):
        raise ModelError(f"{name}: RoPE type {kind!r} is not supported by the GGUF export (default, linear)")
    return theta, kind, float(params["factor"]) if kind == "linear" else None


def _write_params(writer, model, arch: str, quant: str, name: str) -> None:
    cfg = model.config
    ftype = getattr(gguf.LlamaFileType, "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if arch == "gpt2":
        writer.add_block_count(cfg.n_layer)
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta, kind, factor = _rope(cfg, name)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        writer.add_rope_freq_base(theta)
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(factor)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != cfg.hidden_size // cfg.num_attention_heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
    writer.add_file_type(ftype)


# ----------------------------------------------------------------------------- tensors
def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _written(model) -> list[str]:
    """The HF names of the tensors a GGUF gets: buffers and a tied LM head are left out."""
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return [k for k in model.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"))
            and not (k == "lm_head.weight" and tied)]


def tensor_count(model) -> int:
    """How many tensors ``write_gguf`` writes (for a progress bar)."""
    return len(_written(model))


def _tensors(model, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in the layout llama.cpp expects), the tied LM head and buffers left out."""
    cfg = model.config
    state = model.state_dict()
    for hf_name in _written(model):
        t = state[hf_name].detach().float()
        if arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            t = t.t()
        elif arch == "llama" and ".q_proj." in hf_name:
            t = _permute(t, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            t = _permute(t, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        yield hf_name, t.contiguous()


def _qtype(gguf_name: str, n_dims: int, quant: str):
    Q = gguf.GGMLQuantizationType
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight") \
            or gguf_name.startswith("position_embd"):
        return Q.F32
    if gguf_name.startswith(("token_embd", "output.")) and quant.startswith(("q4", "q5")):
        return Q.Q8_0
    return Q[quant.upper()]


def write_gguf(model, tokenizer, path: str | Path, quant: str = "f32", name: str = "model", template=None,
               progress=None) -> Path:
    """Write ``model`` (a llama or gpt2 causal LM, any float dtype) and its tokenizer to ``path``.

    ``template`` (a ``PromptTemplate``): embed it as ``tokenizer.chat_template`` and make its end-of-turn token
    the EOS (and EOT), so llama.cpp, LM Studio and Ollama stop where quill does; without it the tokenizer's own
    chat template, if any, is copied. ``progress(n)`` is called once per tensor written."""
    quant = _check_quant(quant)
    arch = _arch(model, name)
    model_arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch])
    n_blocks = model.config.n_layer if arch == "gpt2" else model.config.num_hidden_layers
    names = gguf.get_tensor_name_map(model_arch, n_blocks)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[model_arch])
    _write_params(writer, model, arch, quant, name)
    write_tokenizer(writer, tokenizer, model.get_input_embeddings().weight.shape[0], name, template)
    with torch.inference_mode():
        for hf_name, t in _tensors(model, arch):
            new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise ModelError(f"{name}: tensor {hf_name} has no GGUF name for {arch}")
            data = t.numpy()
            qtype = _qtype(new, data.ndim, quant)
            try:
                out = gguf.quants.quantize(data, qtype)
            except gguf.QuantError:  # a row length that is not a multiple of the block size
                qtype = gguf.GGMLQuantizationType.F16
                out = gguf.quants.quantize(data, qtype)
            writer.add_tensor(new, out, raw_dtype=qtype)
            if progress is not None:
                progress(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


# ----------------------------------------------------------------------------- cache
def fingerprint(model, tokenizer, quant: str) -> str:
    """sha256 of what the export reads: every weight's name, dtype, shape and bytes, the model config, the
    tokenizer's definition, the quant type and the exporter version (~0.5 s for 135M fp32 parameters)."""
    h = hashlib.sha256(f"quill-gguf-{EXPORT_VERSION}|{quant}|".encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)).encode())
    with torch.inference_mode():
        for key, t in model.state_dict().items():
            t = t.detach().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).cpu().numpy().data)
    return h.hexdigest()


def gguf_cache_dir() -> Path:
    return cache_home() / "gguf"


def export_gguf(model, tokenizer, quant: str = "q8_0", name: str = "model") -> Path:
    """The cached GGUF export of this exact model + tokenizer at ``quant``, written on first use."""
    quant = _check_quant(quant)
    _arch(model, name)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "model"
    target = gguf_cache_dir() / f"{slug}-{fingerprint(model, tokenizer, quant)[:16]}-{quant}.gguf"
    if target.is_file():
        return target
    log.warning("exporting %s to GGUF (%s, once) into %s", name, quant, target)
    with atomic_path(target, fsync=False) as tmp:
        write_gguf(model, tokenizer, tmp, quant, name)
    return target

