"""Sampling for the eval suite: N samples per prompt with fixed seeds, and whether each one stopped.

Eval must record, per sample, whether generation ended with the end-of-turn / EOS token or ran into
``max_new_tokens`` (the stopping metric), and be reproducible: seed ``base_seed + prompt index``, the
N samples of a prompt drawn in one batch. The serving engine (``quill.generate.engine.Engine``,
``generate_batch``, finish_reason "stop"/"length") does exactly that with the same prompt formatting
as chat and serve, so it is used when present; ``model.generate`` is the fallback, formatting prompts
the same way (chat through ``PromptTemplate.encode_prompt``, raw as plain text as DAPT saw poems).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quill.data.template import encode_text


@dataclass
class Sample:
    text: str
    finished: bool          # ended with a stop token before max_new_tokens
    new_tokens: int


_ENGINE: dict = {}      # one cached engine: the model being evaluated (eval loads models one at a time)


def _engine(model, tokenizer, template):
    """The serving engine around ``model``, or None when quill.generate.engine is not available."""
    try:
        from quill.generate.engine import Engine
    except ImportError:
        return None
    cached = _ENGINE.get("engine")
    if cached is None or cached.model is not model or cached.template is not template:
        _ENGINE.clear()
        # fast=False: batches run through the model directly; a compiled single-stream decoder is not needed
        _ENGINE["engine"] = Engine(model, tokenizer, template, name="eval", fast=False)
    return _ENGINE["engine"]


def release_engine() -> None:
    """Drop the cached engine (and its reference to the last model) so that model can be freed."""
    _ENGINE.clear()


def sample_prompt(model, tokenizer, template, prompt: str, mode: str, n: int, seed: int, temperature: float = 0.7,
                  top_p: float = 0.95, top_k: int = 0, repetition_penalty: float = 1.1,
                  max_new_tokens: int = 160, **_ignored) -> list[Sample]:
    """``n`` samples for one prompt (temperature 0: greedy, the n copies agree)."""
    engine = _engine(model, tokenizer, template)
    if engine is None:
        return _sample_hf(model, tokenizer, template, prompt, mode, n, seed, temperature, top_p, top_k,
                          repetition_penalty, max_new_tokens)
    ids = engine.chat_prompt([{"role": "user", "content": prompt}]) if mode == "chat" else engine.text_prompt(prompt)
    params = engine.params(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                           max_new_tokens=max_new_tokens, seed=seed)
    results = engine.generate_batch([list(ids)] * n, params)
    return [Sample(text=r.text.strip("\n"), finished=r.finish_reason == "stop", new_tokens=len(r.token_ids))
            for r in results]


def prompt_ids(tokenizer, template, prompt: str, mode: str) -> list[int]:
    """Token ids of a suite prompt: ``chat`` through the template, ``raw`` as plain text (as DAPT saw poems)."""
    if mode == "chat":
        return list(template.encode_prompt(tokenizer, [{"role": "user", "content": prompt}]))
    return encode_text(tokenizer, prompt)


def stop_ids(tokenizer, template) -> list[int]:
    ids = list(template.stop_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def _sample_hf(model, tokenizer, template, prompt: str, mode: str, n: int, seed: int, temperature: float,
               top_p: float, top_k: int, repetition_penalty: float, max_new_tokens: int) -> list[Sample]:
    """Fallback: ``model.generate`` with the stop tokens as EOS; finished = a stop token came before the limit."""
    from transformers import set_seed
    ids = prompt_ids(tokenizer, template, prompt, mode)
    stops = stop_ids(tokenizer, template)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids] * n, device=device)
    set_seed(seed)
    sampling = temperature > 0
    out = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=sampling,
        temperature=temperature if sampling else None, top_p=top_p if sampling else None,
        top_k=(top_k or None) if sampling else None, repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens, eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    samples = []
    for row in out[:, len(ids):].tolist():
        # generate pads finished rows with pad (often == eos): cut at the first stop token
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        body = row if cut is None else row[:cut]
        text = tokenizer.decode(body, skip_special_tokens=True)
        samples.append(Sample(text=text.strip("\n"), finished=cut is not None, new_tokens=len(body)))
    return samples
