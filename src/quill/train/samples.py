"""Samples for the fixed prompts before and after training (the reference's before/after reading)."""
from __future__ import annotations


def sample_prompts(model, tokenizer, template, prompts: list[str], gen_cfg) -> dict[str, str]:
    """One answer per prompt, formatted by the checkpoint's template, with the run's sampling settings.

    Prompt i uses seed ``generation.seed + i``, so the base model and the poet draw the same random numbers.
    """
    if not prompts:
        return {}
    from quill.generate.engine import Engine

    was_training = model.training
    model.eval()
    engine = Engine(model, tokenizer, template, generation=gen_cfg.model_dump(), fast=False)
    out = {}
    for i, prompt in enumerate(prompts):
        ids = engine.chat_prompt([{"role": "user", "content": prompt}])
        out[prompt] = engine.generate(ids, engine.params(seed=gen_cfg.seed + i)).text
    model.train(was_training)
    return out
