"""``quill eval RUN``: losses, samples and poetry metrics for the base model and each stage; eval.json + reports.

Skeleton: read the run → build the copy index and the human reference once → for each model in
turn (base, then every stage's saved model; ``models=`` picks a subset) load it, measure token-weighted
loss on every stage's splits, sample the suite (``samples_per_prompt`` seeds a prompt, batched), score
the samples, and for the poet also sample with form-aware decoding (the ``<model>+form`` row), free it →
write eval.json (means, and 95% bootstrap intervals over the samples), report.md, report.html.
Models are loaded one at a time and freed after use, so evaluating a 1B run needs one model's memory.

Seeds: sample j of prompt i uses ``generation.seed + 1000 * i + j`` (the same for every model and for
the +form row, so rows differ by the model, not by luck); with ``best_of`` N, candidate k of that
sample uses the same seed + ``BEST_OF_STRIDE * k`` (candidate 0 is the plain sample).
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from quill import __version__, models
from quill.config import EvalConfig, PipelineConfig, load_config
from quill.data.preferences import preference_to_instruction
from quill.errors import QuillError
from quill.evaluate.metrics.copying import NgramIndex, copying
from quill.evaluate.poetry import aggregate, intervals, rescore, score_poem
from quill.evaluate.reference import build_copy_index, human_reference
from quill.evaluate.report import SPLITS, perplexity, write_report
from quill.evaluate.sampling import Rate, Request, sample_requests
from quill.evaluate.suite import Suite, load_suite
from quill.run import RunFolder
from quill.train.batches import build_loader
from quill.train.evaluation import eval_loss

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")
DECODINGS = ("plain", "form")
SEED_STRIDE = 1000           # seed = base + SEED_STRIDE * prompt index + sample index
BEST_OF_STRIDE = 1_000_000   # best-of candidate k: the sample's seed + BEST_OF_STRIDE * k
FORM_SUFFIX = "+form"


class EvalError(QuillError):
    """A run that cannot be evaluated (no config, nothing trained, unknown model name), phrased for the user."""


def model_loaders(run: RunFolder | Path, cfg: PipelineConfig, stages: list[str]) -> list[tuple[str, Callable]]:
    """(name, load) for base and every stage with a saved model; load() -> (model, tokenizer, template)."""
    run = RunFolder(run)
    out: list[tuple[str, Callable]] = [("base", lambda: models.load_base(cfg.model)[:3])]
    for stage in stages:
        if run.has_model(stage):
            out.append((stage, lambda folder=run.model_dir(stage): models.load_checkpoint(folder)[:3]))
    return out


def _counted(loader, limit: int | None, bar):
    """The loader's first ``limit`` batches, ticking ``bar`` with batches and tokens/s."""
    t0, tokens = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        yield batch
        tokens += int(batch["input_ids"].numel())
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)


def split_losses(model, tokenizer, template, run: RunFolder | Path, cfg: PipelineConfig, stages: list[str],
                 label: str = "") -> dict:
    """{stage: {split: {"loss", "perplexity", "tokens"}}}: token-weighted, each stage's data with its own
    batching settings (block size, packing), capped by ``eval.max_batches`` (the train split by
    ``eval.train_batches``: its loss only checks for over-fitting, a few batches tell)."""
    out: dict = {}
    run = RunFolder(run)
    for stage in stages:
        st = cfg.stage(stage)
        kind = "poems" if st.kind == "dapt" else "instructions"
        for split in SPLITS:
            records = run.read_split(stage, split)
            if st.kind == "dpo":  # a preference stage's loss: its chosen answers' (comparable with sft's)
                records = [preference_to_instruction(r) for r in records]
            if not records:
                continue
            loader = build_loader(kind, records, tokenizer, template, st.train)
            limit = cfg.eval.max_batches
            if split == "train" and cfg.eval.train_batches:
                limit = min(limit or cfg.eval.train_batches, cfg.eval.train_batches)
            total = len(loader) if limit is None else min(len(loader), limit)
            with tqdm(total=total, desc=f"loss {label} {stage}/{split}", unit="batch", leave=False) as bar:
                r = eval_loss(model, _counted(loader, limit, bar))
            loss = r["loss"] if r["tokens"] else None
            out.setdefault(stage, {})[split] = {"loss": loss, "perplexity": perplexity(loss), "tokens": r["tokens"],
                                                "batches": total}
    return out


def suite_requests(suite: Suite, n: int, base_seed: int, form: bool = False, best_of: int = 1) -> list[Request]:
    """Every (prompt i, sample j, candidate k) request, in that order (see the module docstring for seeds)."""
    return [Request(p.prompt, p.mode, base_seed + SEED_STRIDE * i + j + BEST_OF_STRIDE * k, form)
            for i, p in enumerate(suite.prompts) for j in range(n) for k in range(best_of)]


def sample_suite(model, tokenizer, template, suite: Suite, n: int, sampling: dict, index: NgramIndex | None,
                 label: str = "", sampler=None, forms: tuple[bool, ...] = (False,), best_of: int = 1,
                 batch_size: int = EvalConfig.model_fields["batch_size"].default) -> list[list[dict]]:
    """``n`` scored samples per suite prompt for each decode of ``forms`` (False: plain, True: form-aware), one
    list of rows per decode. The decodes' requests go through ``sampler`` together, ``batch_size`` rows at a
    time, so one decode's long rows overlap the other's instead of each decode ending on a near-empty batch.

    Raw prompts are scored as the whole poem (prompt + continuation), copying on the continuation only
    (the prompt is given, not recalled). With ``best_of`` > 1 each (prompt, seed) keeps its best candidate
    by poetic score; ``poetic_score_single`` is candidate 0's (what one sample would have scored)."""
    sampler = sampler or sample_requests
    settings = {k: v for k, v in sampling.items() if k != "seed"}
    per_decode = [suite_requests(suite, n, int(sampling.get("seed") or 0), form, best_of) for form in forms]
    requests = [r for reqs in per_decode for r in reqs]
    rate = Rate()
    with tqdm(total=len(requests), desc=f"sampling {label}", unit="poem", leave=False) as bar:
        def progress(poems: int, tokens: int) -> None:
            bar.update(poems)
            bar.set_postfix(rate.add(poems, tokens), refresh=False)
        samples = sampler(model, tokenizer, template, requests, batch_size=batch_size, progress=progress, **settings)
    if len(samples) != len(requests):
        raise EvalError(f"the sampler returned {len(samples)} samples for {len(requests)} requests")
    out, at = [], 0
    for reqs in per_decode:
        out.append(_scored(suite, n, best_of, samples[at:at + len(reqs)], reqs, index))
        at += len(reqs)
    return out


def _scored(suite: Suite, n: int, best_of: int, samples: list, requests: list[Request],
            index: NgramIndex | None) -> list[dict]:
    """The eval.json rows of one decode's samples (in ``suite_requests`` order), best of ``best_of`` kept."""
    rows, at = [], 0
    for p in suite.prompts:
        for j in range(n):
            cands = []
            for k in range(best_of):
                s, req = samples[at], requests[at]
                at += 1
                poem = (p.prompt + s.text) if p.mode == "raw" else s.text
                metrics = score_poem(poem, p.checks, finished=s.finished)
                metrics.update(copying(s.text, index))
                cands.append((rescore(metrics, p.checks), s, poem, req.seed))
            kept = max(range(best_of), key=lambda k: cands[k][0]["poetic_score"])   # first of equal scores
            metrics, s, poem, _ = cands[kept]
            row = {"prompt_id": p.id, "sample": j, "seed": cands[0][3], "text": poem, "finished": s.finished,
                   "new_tokens": s.new_tokens, "metrics": metrics}
            if best_of > 1:
                metrics["poetic_score_single"] = cands[0][0]["poetic_score"]
                row["best_of"] = {"n": best_of, "kept": kept, "seeds": [c[3] for c in cands],
                                  "scores": [c[0]["poetic_score"] for c in cands]}
            rows.append(row)
    return rows


def _release() -> None:
    """Return freed model memory now (the next model is about to be loaded)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _select(loaders: list[tuple[str, Callable]], models: list[str] | None) -> list[tuple[str, Callable]]:
    if not models:
        return loaders
    known = [name for name, _ in loaders]
    unknown = [m for m in models if m not in known]
    if unknown:
        raise EvalError(f"--models: no model named {', '.join(unknown)} in this run (have: {', '.join(known)})")
    return [(name, load) for name, load in loaders if name in models]


def _form_models(cfg: PipelineConfig, loaders, decode: list[str]) -> set[str]:
    """Models also sampled form-aware: ``eval.form_models``, by default the poet (the last stage's model)."""
    if "form" not in decode:
        return set()
    names = [name for name, _ in loaders]
    if cfg.eval.form_models is not None:
        return {m for m in cfg.eval.form_models if m in names}
    return {names[-1]} if len(names) > 1 else set()


def _parse_list(value, allowed=None, what: str = "") -> list[str] | None:
    if value is None:
        return None
    items = [x.strip() for x in (value.split(",") if isinstance(value, str) else value) if x.strip()]
    bad = [x for x in items if allowed is not None and x not in allowed]
    if bad:
        raise EvalError(f"{what}: unknown {', '.join(bad)} (use {', '.join(allowed)})")
    return items


def run_eval(run, samples: int | None = None, max_new_tokens: int | None = None, quick: bool = False,
             losses: bool = True, write: bool = True, sampler=None, models=None, decode=None,
             best_of: int | None = None, batch_size: int | None = None) -> dict:
    """Evaluate a run folder; returns the eval.json dict (also written to RUN/eval.json with the reports).

    ``quick``: the reference's two prompts only. ``losses=False`` skips the loss table (sweeps have it
    in summary.json already). ``models``: a subset of base and the stage names (list or "a,b"); ``decode``:
    "plain", "form" or both (default ``eval.decode``); ``best_of``/``batch_size`` override ``eval.*``.
    ``sampler`` replaces ``sampling.sample_requests`` (tests).
    """
    run = RunFolder(run)
    if not run.is_run():
        raise EvalError(f"{run.path}: not a quill run folder (no config.yaml)")
    t0 = time.perf_counter()
    cfg = load_config(run.config)
    stages = run.stage_order()
    suite = load_suite(cfg.eval.suite, cfg.eval.prompts)
    if quick:
        suite = suite.quick()
    n = samples or cfg.eval.samples_per_prompt
    decode = _parse_list(decode, DECODINGS, "--decode") or list(cfg.eval.decode)
    best_of = best_of or cfg.eval.best_of
    batch_size = batch_size or cfg.eval.batch_size
    sampling = {k: v for k, v in cfg.generation.model_dump().items() if k in SAMPLING_KEYS}
    if max_new_tokens:
        sampling["max_new_tokens"] = max_new_tokens
    print(f"[eval] copy index and human reference from {run.data_root}")
    index = build_copy_index(run, stages)
    human_rows, human_info = human_reference(run, stages, index)

    all_loaders = model_loaders(run, cfg, stages)
    if len(all_loaders) == 1:
        print(f"note: {run.path} has no trained stage model yet; evaluating the base model only")
    form_models = _form_models(cfg, all_loaders, decode)
    loaders = _select(all_loaders, _parse_list(models, what="--models"))
    all_losses, all_samples, metrics, cis, names, timings, speed = {}, {}, {}, {}, [], {}, {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"[eval] {len(loaders)} model(s) × {len(suite.prompts)} prompts × {n} seed(s)"
          + (f" × best of {best_of}" if best_of > 1 else "")
          + (f"; form-aware decoding for {', '.join(sorted(form_models))}" if form_models else ""))
    for name, load in loaders:
        t_model = time.perf_counter()
        print(f"[eval] {name}: loading")
        model, tokenizer, template = load()
        model = model.to(device).eval()
        if losses:
            print(f"[eval] {name}: loss table")
            t = time.perf_counter()
            all_losses[name] = split_losses(model, tokenizer, template, run, cfg, stages, label=name)
            timings[f"{name} losses"] = round(time.perf_counter() - t, 1)
        rows_of = [(name, False)] if "plain" in decode else []
        if name in form_models:
            rows_of.append((name + FORM_SUFFIX, True))
        decoded: list[list[dict]] = []
        if rows_of:
            label = " and ".join(row for row, _ in rows_of)
            print(f"[eval] {label}: sampling {len(suite.prompts) * n * best_of * len(rows_of)} poems"
                  + (" (plain and form-aware in one batch)" if len(rows_of) > 1 else
                     " (form-aware)" if rows_of[0][1] else ""))
            t = time.perf_counter()
            decoded = sample_suite(model, tokenizer, template, suite, n, sampling, index, label=label,
                                   sampler=sampler, forms=tuple(f for _, f in rows_of), best_of=best_of,
                                   batch_size=batch_size)
            seconds = round(time.perf_counter() - t, 1)
            timings[f"{label} sampling"] = seconds
            tokens = sum(r["new_tokens"] for rows in decoded for r in rows)
            speed[label] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
        for (row_name, _), rows in zip(rows_of, decoded):
            names.append(row_name)
            all_samples[row_name] = rows
            metrics[row_name] = aggregate([r["metrics"] for r in rows])
            cis[row_name] = intervals([r["metrics"] for r in rows])
        del model, tokenizer, template
        _release()
        print(f"[eval] {name}: done in {time.perf_counter() - t_model:.0f} s")
    if human_rows:
        for r in human_rows:   # no prompt asked these poems for anything: a poetic score would compare nothing
            r.pop("poetic_score", None)
        metrics["human"] = aggregate(human_rows)
        cis["human"] = intervals(human_rows)
    data = {
        "quill_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": str(run.path),
        "model": cfg.model.name, "stage_order": stages, "models": names,
        "suite": {"name": suite.name, "version": suite.version, "prompts": [p.to_dict() for p in suite.prompts]},
        "samples_per_prompt": n, "best_of": best_of, "decode": decode, "sampling": sampling,
        "seeds": f"generation.seed + {SEED_STRIDE} * prompt index + sample index",
        "losses": all_losses, "metrics": metrics, "intervals": cis,
        "human": human_info, "copy_index": {"texts": index.texts, "ngrams": len(index), "n": index.n},
        "samples": all_samples, "timings_s": timings, "sampling_speed": speed,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if write:
        run.write_eval(data)
        paths = write_report(data, run.path, run.read_metrics())
        print(f"[eval] wrote {run.eval_path}, {paths['md']}, {paths['html']} in {data['wall_s']:.0f} s")
    return data
