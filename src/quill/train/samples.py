"""Samples of the fixed prompts: before and after training (the reference's before/after reading), and at
every evaluation during training, scored, so a user watches the poet take shape.

``EvalSamples`` is what the training loop calls next to each validation loss: the first
``eval.train_samples`` of ``eval.prompts``, one batched engine call, seed ``generation.seed + i`` (the
same every evaluation, so the curve shows the model changing, not the dice), ``eval.train_max_new_tokens``
tokens (short: ~5 s on the demo's 2-core CPU), each answer scored by ``quill.verse.score.score_text`` against
the checks its own words ask for (``checks_from_prompt``). The mean goes to metrics.jsonl
(``poetic_score`` on the eval row) and TensorBoard (``<stage>/eval/poetic_score``, the texts as
``<stage>/eval/samples``).
"""
from __future__ import annotations

import contextlib

from quill.decoding.engine import Engine
from quill.train.loss import hf_model
from quill.verse.score import checks_from_prompt, score_text


def sample_prompts(model, tokenizer, template, prompts: list[str], gen_cfg) -> dict[str, str]:
    """One answer per prompt, formatted by the checkpoint's template, with the run's sampling settings, in one
    batch (each row with its own seed, so an answer does not depend on the other prompts).

    Prompt i uses seed ``generation.seed + i``, so the base model and the poet draw the same random numbers.
    """
    if not prompts:
        return {}
    was_training = model.training
    model.eval()
    engine = Engine(model, tokenizer, template, generation=gen_cfg.model_dump(), fast=False)
    ids = [engine.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
    results = engine.generate_batch(ids, [engine.params(seed=gen_cfg.seed + i) for i in range(len(prompts))])
    model.train(was_training)
    return {prompt: r.text for prompt, r in zip(prompts, results)}


class EvalSamples:
    """Call with (stage, step[, accelerator]) -> {"poetic_score": mean} after sampling the prompts."""

    def __init__(self, model, tokenizer, template, prompts: list[str], gen_cfg, max_new_tokens: int = 64):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.prompts, self.gen_cfg, self.max_new_tokens = list(prompts), gen_cfg, max_new_tokens
        self.checks = [checks_from_prompt(p) for p in self.prompts]
        self.last: list[dict] = []

    def sample(self) -> list[dict]:
        """[{"prompt", "text", "finished", "poetic_score"}] for each prompt, in one batch."""
        was_training = self.model.training
        self.model.eval()
        try:
            with sdpa_attention(self.model):
                engine = Engine(self.model, self.tokenizer, self.template, generation=self.gen_cfg.model_dump(),
                                fast=False)
                ids = [engine.chat_prompt([{"role": "user", "content": p}]) for p in self.prompts]
                params = [engine.params(seed=self.gen_cfg.seed + i, max_new_tokens=self.max_new_tokens)
                          for i in range(len(self.prompts))]
                results = engine.generate_batch(ids, params, prompt_texts=self.prompts)
        finally:
            self.model.train(was_training)
        out = []
        for prompt, checks, r in zip(self.prompts, self.checks, results):
            finished = r.finish_reason == "stop"
            out.append({"prompt": prompt, "text": r.text, "finished": finished,
                        "poetic_score": score_text(r.text, checks, finished)})
        return out

    def __call__(self, stage: str, step: int, accelerator=None) -> dict:
        self.last = self.sample()
        mean = sum(s["poetic_score"] for s in self.last) / len(self.last)
        if accelerator is not None:
            accelerator.log({f"{stage}/eval/poetic_score": mean}, step=step)
            _log_text(accelerator, f"{stage}/eval/samples", self.last, step)
        return {"poetic_score": round(mean, 4)}


@contextlib.contextmanager
def sdpa_attention(model):
    """SDPA while sampling when packed training switched the model to flex attention (GPUs): flex attention
    is for the packed blocks' masks, decoding with a KV cache takes the plain kernel."""
    hf = hf_model(model)
    current = getattr(hf.config, "_attn_implementation", None)
    if current != "flex_attention":
        yield
        return
    hf.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        hf.set_attn_implementation(current)


def _log_text(accelerator, tag: str, samples: list[dict], step: int) -> None:
    """The samples as Markdown in TensorBoard's text tab (other trackers get the scalar only)."""
    try:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
    except (ValueError, KeyError, AttributeError):
        return
    if writer is None or not hasattr(writer, "add_text"):
        return
    body = "\n\n".join(f"**{s['prompt']}** (score {s['poetic_score']:.2f}{'' if s['finished'] else ', no EOS'})"
                       f"\n\n    " + s["text"].replace("\n", "\n    ") for s in samples)
    writer.add_text(tag, body, step)


def eval_samples(cfg, model, tokenizer, template) -> EvalSamples | None:
    """The training-time sampler of a pipeline config, or None when ``eval.train_samples`` is 0 / no prompts."""
    prompts = list(cfg.eval.prompts)[: cfg.eval.train_samples]
    if not prompts:
        return None
    return EvalSamples(model, tokenizer, template, prompts, cfg.generation, cfg.eval.train_max_new_tokens)


def samples_row(samples: EvalSamples | None, stage: str, step: int, accelerator=None) -> dict:
    """What an eval row of metrics.jsonl gains: {"poetic_score": ...}, or {} without a sampler."""
    return {} if samples is None else samples(stage, step, accelerator)
