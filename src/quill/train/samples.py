"""Samples for the fixed prompts before and after training (the reference's before/after reading)."""
from __future__ import annotations

import torch


def sample_prompts(model, tokenizer, template, prompts: list[str], gen_cfg) -> dict[str, str]:
    """One answer per prompt, formatted by the checkpoint's template, with the run's sampling settings."""
    if not prompts:
        return {}
    from quill.generate.engine import Engine

    engine = Engine(model, tokenizer, template)
    out = {}
    for i, prompt in enumerate(prompts):
        res = engine.complete([{"role": "user", "content": prompt}], temperature=gen_cfg.temperature,
                              top_p=gen_cfg.top_p, top_k=gen_cfg.top_k,
                              repetition_penalty=gen_cfg.repetition_penalty,
                              max_new_tokens=gen_cfg.max_new_tokens, seed=gen_cfg.seed + i)
        out[prompt] = res.text
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out
