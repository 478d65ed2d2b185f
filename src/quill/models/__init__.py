"""The only place that loads models, tokenizers or adapters, merges adapters and writes checkpoints.

Split into ``presets`` (names -> local folders: hub ids, the offline SmolLM2 conversion, tiny test models),
``loading`` (tokenizer / base / checkpoint / inference loads), ``precision`` (the dtype policy),
``adapters`` (LoRA, DoRA or full fine-tuning), ``quantize`` (QLoRA: the frozen base in bitsandbytes nf4 / int8),
``saving`` (atomic safetensors checkpoints) and ``gguf_export`` (GGUF files for the llama.cpp backend).
Import from ``quill.models``; the split is an implementation detail.
"""
from quill.models.adapters import apply_adapter, count_params, load_adapter, lora_targets, merge_adapter, save_adapter
from quill.models.gguf_export import export_gguf, write_gguf
from quill.models.loading import (Servable, find_run_model, load_base, load_checkpoint, load_for_inference,
                                  load_tokenizer)
from quill.models.precision import resolve_dtype
from quill.models.presets import PRESETS, cache_dir, gpt2_tokenizer_path, resolve_model_path
from quill.models.saving import hf_generation_config, save_model

__all__ = [
    "PRESETS", "Servable", "apply_adapter", "cache_dir", "count_params", "export_gguf", "find_run_model",
    "gpt2_tokenizer_path", "hf_generation_config", "load_adapter", "load_base", "load_checkpoint",
    "load_for_inference", "load_tokenizer", "lora_targets", "merge_adapter", "resolve_dtype", "resolve_model_path",
    "save_adapter", "save_model", "write_gguf",
]
