"""Checkpoints: weights (safetensors), tokenizer, ``template.json`` and ``generation_config.json`` in one folder,
so chat / serve / eval can reload a stage without the run's config, and any Hugging Face tool can too: the
tokenizer files carry quill's template as their ``chat_template`` and the generation config stops at its
end-of-turn token.

Writes are atomic (``quill.files.atomic_dir``): everything goes to ``FOLDER.tmp-<pid>``, then the old folder
is renamed aside, the new one renamed into place, and the old one removed. A crash or error while writing
leaves the previous checkpoint untouched (only a crash between the two renames leaves it under
``FOLDER.old-<pid>``).

Dtype: weights are saved in the model's own dtype unless ``dtype`` is given — a bf16 model stays bf16 (half the
disk), an fp32 CPU run stays fp32 (no silent precision loss between stages).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quill.config import GenerationConfig
from quill.errors import ModelError
from quill.files import atomic_dir
from quill.models.precision import resolve_dtype

GENERATION_FILE = "generation_config.json"


def _quill_generation(generation: GenerationConfig | dict | None) -> GenerationConfig:
    if generation is None:
        return GenerationConfig()
    if isinstance(generation, GenerationConfig):
        return generation
    return GenerationConfig(**{k: v for k, v in dict(generation).items() if k in GenerationConfig.model_fields})


def hf_generation_config(generation: GenerationConfig | dict | None, tokenizer, template):
    """A transformers GenerationConfig from quill's settings; EOS ids include the template's end-of-turn,
    so ``model.generate`` stops at ``<|im_end|>`` too. The quill dict rides along under ``"quill"``."""
    from transformers import GenerationConfig as HFGenerationConfig
    g = _quill_generation(generation)
    sample = g.temperature > 0
    kwargs: dict[str, Any] = dict(do_sample=sample, max_new_tokens=g.max_new_tokens,
                                  repetition_penalty=g.repetition_penalty,
                                  eos_token_id=template.stop_token_ids(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, quill=g.model_dump())
    if tokenizer.bos_token_id is not None:
        kwargs["bos_token_id"] = tokenizer.bos_token_id
    if sample:  # greedy configs with sampling knobs make transformers warn
        kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    return HFGenerationConfig(**kwargs)


def read_generation(folder: str | Path) -> dict:
    """quill's generation dict (GenerationConfig fields) from a checkpoint; defaults when absent."""
    path = Path(folder) / GENERATION_FILE
    raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if isinstance(raw.get("quill"), dict):
        return _quill_generation(raw["quill"]).model_dump()
    g = {k: raw[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens") if k in raw}
    if raw.get("do_sample") is False:
        g["temperature"] = 0.0
    return _quill_generation(g).model_dump()


def save_tokenizer(folder: str | Path, tokenizer, template) -> None:
    """The tokenizer files with ``template`` as their ``chat_template``, so other tools (transformers, vLLM,
    TGI) render the prompt quill trained on; the tokenizer object itself is left as it was."""
    before = getattr(tokenizer, "chat_template", None)
    tokenizer.chat_template = template.jinja_source()
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = before


def save_model(folder: str | Path, model, tokenizer, template, generation: GenerationConfig | dict | None = None,
               dtype: Any = None) -> Path:
    """Atomically write a complete checkpoint (see the module docstring). Pass a plain model
    (``merge_adapter`` first): a PeftModel here is an error rather than a silent adapter-only save."""
    if hasattr(model, "peft_config"):
        raise ModelError("save_model needs a plain model: merge_adapter() first, or save_adapter() the adapter")
    original = model.dtype
    target = resolve_dtype(dtype) if dtype is not None else original
    with atomic_dir(folder) as tmp:
        if target != original:
            model.to(target)
        # transformers writes only on torch.distributed's rank 0; quill decides which processes write (each
        # machine with a disk of its own keeps a copy of the run: train.nodes), so whoever calls this writes
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
        try:
            model.save_pretrained(tmp)  # safetensors (transformers 5 writes nothing else)
        finally:
            del model.should_save_on_this_rank
            if target != original:
                model.to(original)
        # overwrites the model's own generation_config.json; the model object is left unchanged
        hf_generation_config(generation, tokenizer, template).save_pretrained(tmp)
        save_tokenizer(tmp, tokenizer, template)
        template.save(tmp)
    return Path(folder)
