"""``quill eval RUN``: losses, samples and poetry metrics for the base model and each stage; eval.json + reports.

Skeleton: read the run → build the copy index and the human reference once → for each model in
turn (base, then every stage's saved model) load it, measure token-weighted loss on every stage's
splits, sample the suite, score the samples, free it → write eval.json, report.md, report.html.
Models are loaded one at a time and freed after use, so evaluating a 1B run needs one model's memory.
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from quill import __version__
from quill.config import PipelineConfig, load_config
from quill.errors import QuillError
from quill.evaluate.metrics.copying import NgramIndex, copying
from quill.evaluate.poetry import aggregate, score_poem
from quill.evaluate.reference import build_copy_index, human_reference, load_split
from quill.evaluate.report import SPLITS, perplexity, write_report
from quill.evaluate.suite import Suite, load_suite

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")


class EvalError(QuillError):
    """A run that cannot be evaluated (no config, nothing trained), phrased for the user."""


def _stage_order(run: Path, cfg: PipelineConfig) -> list[str]:
    summary = run / "summary.json"
    if summary.is_file():
        order = json.loads(summary.read_text(encoding="utf-8")).get("stage_order")
        if order:
            return list(order)
    return [s.name for s in cfg.stages]


def model_loaders(run: Path, cfg: PipelineConfig, stages: list[str]) -> list[tuple[str, Callable]]:
    """(name, load) for base and every stage with a saved model; load() -> (model, tokenizer, template)."""
    from quill import models
    out: list[tuple[str, Callable]] = [("base", lambda: models.load_base(cfg.model)[:3])]
    for stage in stages:
        folder = run / stage / "model"
        if (folder / "template.json").is_file():
            out.append((stage, lambda folder=folder: models.load_checkpoint(folder)[:3]))
    return out


def split_losses(model, tokenizer, template, run: Path, cfg: PipelineConfig, stages: list[str]) -> dict:
    """{stage: {split: {"loss", "perplexity", "tokens"}}}: token-weighted, each stage's data with its own
    batching settings (block size, packing), capped by ``eval.max_batches``."""
    from quill.train.batches import build_loader
    from quill.train.evaluation import eval_loss
    out: dict = {}
    for stage in stages:
        st = cfg.stage(stage)
        kind = "poems" if st.kind == "dapt" else "instructions"
        for split in SPLITS:
            records = load_split(run, stage, split)
            if not records:
                continue
            loader = build_loader(kind, records, tokenizer, template, st.train)
            r = eval_loss(model, loader, max_batches=cfg.eval.max_batches)
            loss = r["loss"] if r["tokens"] else None
            out.setdefault(stage, {})[split] = {"loss": loss, "perplexity": perplexity(loss), "tokens": r["tokens"]}
    return out


def sample_suite(model, tokenizer, template, suite: Suite, n: int, sampling: dict, index: NgramIndex | None,
                 label: str = "", sampler=None) -> list[dict]:
    """N scored samples per suite prompt; seed = sampling seed + prompt index (same seeds for every model).

    Raw prompts are scored as the whole poem (prompt + continuation), copying on the continuation only
    (the prompt is given, not recalled)."""
    if sampler is None:
        from quill.evaluate.sampling import sample_prompt as sampler
    settings = {k: v for k, v in sampling.items() if k != "seed"}
    rows = []
    for i, p in enumerate(tqdm(suite.prompts, desc=f"sampling {label}", unit="prompt", leave=False)):
        seed = int(sampling.get("seed", 0)) + i
        for j, s in enumerate(sampler(model, tokenizer, template, p.prompt, p.mode, n, seed, **settings)):
            poem = (p.prompt + s.text) if p.mode == "raw" else s.text
            metrics = score_poem(poem, p.checks, finished=s.finished)
            metrics.update(copying(s.text, index))
            rows.append({"prompt_id": p.id, "sample": j, "seed": seed, "text": poem, "finished": s.finished,
                         "new_tokens": s.new_tokens, "metrics": metrics})
    return rows


def _release() -> None:
    """Return freed model memory now (the next model is about to be loaded)."""
    from quill.evaluate.sampling import release_engine
    release_engine()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_eval(run, samples: int | None = None, max_new_tokens: int | None = None, quick: bool = False,
             losses: bool = True, write: bool = True, sampler=None) -> dict:
    """Evaluate a run folder; returns the eval.json dict (also written to RUN/eval.json with the reports).

    ``quick``: the reference's two prompts only. ``losses=False`` skips the loss table (sweeps have it
    in summary.json already). ``sampler`` replaces ``sampling.sample_prompt`` (tests).
    """
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise EvalError(f"{run}: not a quill run folder (no config.yaml)")
    t0 = time.perf_counter()
    cfg = load_config(run / "config.yaml")
    stages = _stage_order(run, cfg)
    suite = load_suite(cfg.eval.suite, cfg.eval.prompts)
    if quick:
        suite = suite.quick()
    n = samples or cfg.eval.samples_per_prompt
    sampling = {k: v for k, v in cfg.generation.model_dump().items() if k in SAMPLING_KEYS}
    if max_new_tokens:
        sampling["max_new_tokens"] = max_new_tokens
    index = build_copy_index(run, stages)
    human, human_info = human_reference(run, stages, index)

    loaders = model_loaders(run, cfg, stages)
    if len(loaders) == 1:
        print(f"note: {run} has no trained stage model yet; evaluating the base model only")
    all_losses, all_samples, metrics = {}, {}, {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, load in loaders:
        print(f"[eval] {name}: loading")
        model, tokenizer, template = load()
        model = model.to(device).eval()
        if losses:
            all_losses[name] = split_losses(model, tokenizer, template, run, cfg, stages)
        rows = sample_suite(model, tokenizer, template, suite, n, sampling, index, label=name, sampler=sampler)
        all_samples[name] = rows
        metrics[name] = aggregate([r["metrics"] for r in rows])
        del model, tokenizer, template
        _release()
    if human is not None:
        metrics["human"] = human
    data = {
        "quill_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": str(run),
        "model": cfg.model.name, "stage_order": stages, "models": [name for name, _ in loaders],
        "suite": {"name": suite.name, "version": suite.version, "prompts": [p.to_dict() for p in suite.prompts]},
        "samples_per_prompt": n, "sampling": sampling, "losses": all_losses, "metrics": metrics,
        "human": human_info, "copy_index": {"texts": index.texts, "ngrams": len(index), "n": index.n},
        "samples": all_samples, "wall_s": round(time.perf_counter() - t0, 2),
    }
    if write:
        from quill.train.runfolder import write_json_atomic
        write_json_atomic(run / "eval.json", data)
        paths = write_report(data, run)
        print(f"[eval] wrote {run / 'eval.json'}, {paths['md']}, {paths['html']}")
    return data
