"""``quill pairs RUN``: preference pairs ranked by the poet's own metrics, for a ``dpo`` stage.

Each prompt gets ``n`` poems from the run's last model (one batched decode through
``quill.evaluate.sampling.sample_requests``, i.e. ``Engine.generate_batch``; sample j of prompt i is seeded
``generation.seed + 1000 * i + j``), each poem is scored with the poetic score (``quill.verse.score``, through
``evaluate.poetry.score_poem`` with the checks the prompt names), and the best and the worst become one
preference record: ``{"prompt", "chosen", "rejected"}`` (what ``data.kind: preferences`` reads) plus
``chosen_score`` / ``rejected_score`` / ``margin`` and each side's score terms (``chosen_terms`` /
``rejected_terms``). A pair whose margin is below ``min_margin`` (or whose two poems are the same text) is
dropped and counted.

Where prompts come from: ``suite`` is *not* the eval suite (training on the prompts the evaluation samples would
make the evaluation dishonest): it is the user prompts of the run's prepared instruction data (the train splits,
e.g. ``data/sft/train.jsonl``), deduplicated. ``forms`` is ``quill.data.form_prompts``: requests for haiku,
limericks, sonnets, quatrains, couplets, schemes, meters and line counts on topics the eval suite does not use.
A FILE is a text file of one prompt per line or a ``.jsonl`` with a ``prompt`` field (a string or a message
list). Whatever the source, every eval-suite prompt is taken out and counted (``in_eval_suite``).

``form``: the last ``form`` of a prompt's ``n`` poems are decoded form-aware (``form: auto``, the shape read
from the prompt), the others plain. The form-aware decoder keeps rhyme, line counts and syllables that plain
decoding seldom does, so its poems usually win the pair: DPO then teaches the model to write unaided what the
decoder enforces (what a GGUF in Ollama, which decodes plainly, then gets). Each record says which decode
each side came from (``chosen_decode`` / ``rejected_decode``).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from quill.config import load_config
from quill.data.clean import text_key
from quill.data.form_prompts import form_prompts
from quill.errors import QuillError
from quill.evaluate.poetry import score_poem
from quill.evaluate.run import SAMPLING_KEYS, SEED_STRIDE
from quill.evaluate.sampling import Rate, Request, sample_requests
from quill.evaluate.suite import load_suite
from quill.files import atomic_open
from quill.models import load_checkpoint
from quill.run import RunFolder
from quill.verse.score import checks_from_prompt, score_terms

SUITE = "suite"
FORMS = "forms"


class PairsError(QuillError):
    """``quill pairs`` cannot start: no run, no model, no prompts."""


def corpus_prompts(run: RunFolder) -> list[str]:
    """The user prompts of the run's prepared instruction data (train splits, in stage order), deduplicated."""
    prompts = []
    for stage in run.stage_order():
        for record in run.read_split(stage, "train"):
            messages = record.get("messages") or record.get("prompt")
            if isinstance(messages, list):
                users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
                if users and isinstance(users[-1], str):
                    prompts.append(users[-1])
    return prompts


def file_prompts(path: Path) -> list[str]:
    """One prompt per line, or a ``.jsonl`` whose rows have a ``prompt`` (a string or messages)."""
    if not path.is_file():
        raise PairsError(f"{path}: no such prompts file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not path.name.lower().endswith((".jsonl", ".ndjson")):
        return [line for line in lines if line.strip()]
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line).get("prompt")
        except (json.JSONDecodeError, AttributeError):
            raise PairsError(f"{path}: line {number}: not a JSON object") from None
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            prompt = users[-1] if users else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise PairsError(f"{path}: line {number}: no 'prompt' text")
        out.append(prompt)
    return out


def select_prompts(run: RunFolder, prompts: str, eval_prompts: list[str], limit: int | None = None
                   ) -> tuple[list[str], Counter]:
    """The prompts to sample (deduplicated, stripped) and what was left out: ``duplicate``, and every
    ``in_eval_suite`` prompt (so the eval suite stays unseen)."""
    if prompts == SUITE:
        raw = corpus_prompts(run)
    elif prompts == FORMS:
        raw = form_prompts(eval_prompts)
    else:
        raw = file_prompts(Path(prompts))
    if not raw:
        raise PairsError(f"{run.path}: no instruction prompts in the run's prepared data (data/<stage>/train.jsonl);"
                         " pass --prompts FILE" if prompts == SUITE else f"{prompts}: no prompts")
    held = {text_key(p) for p in eval_prompts}
    seen, out, left = set(), [], Counter()
    for prompt in (p.strip() for p in raw):
        key = text_key(prompt)
        if key in held:
            left["in_eval_suite"] += 1
        elif key in seen or not key:
            left["duplicate"] += 1
        else:
            seen.add(key)
            out.append(prompt)
    return (out[:limit] if limit else out), left


def best_and_worst(prompt: str, samples, decodes: list[str] | None = None) -> dict:
    """The pair of one prompt's samples: the best and the worst by poetic score, with their terms and (given
    ``decodes``, "plain" or "form" per sample) the decode each came from."""
    checks = checks_from_prompt(prompt)
    decodes = decodes or ["plain"] * len(samples)
    scored = []
    for s, decode in zip(samples, decodes):
        metrics = score_poem(s.text, checks, s.finished)
        scored.append((metrics["poetic_score"], s.text, score_terms(metrics, checks), decode))
    best = max(scored, key=lambda x: x[0])
    worst = min(scored, key=lambda x: x[0])
    return {"prompt": prompt, "chosen": best[1], "rejected": worst[1], "chosen_score": round(best[0], 4),
            "rejected_score": round(worst[0], 4), "margin": round(best[0] - worst[0], 4),
            "chosen_terms": best[2], "rejected_terms": worst[2], "chosen_decode": best[3],
            "rejected_decode": worst[3]}


def make_pairs(run: str | Path, prompts: str = SUITE, n: int = 4, out: str | Path = "pairs.jsonl",
               min_margin: float = 0.05, max_prompts: int | None = None, batch_size: int | None = None,
               max_new_tokens: int | None = None, form: int = 0, sampler=None) -> dict:
    """Write ``out`` (see the module docstring); returns ``{"pairs", "prompts", "dropped", "left_out", ...}``.
    ``sampler`` replaces ``sampling.sample_requests`` (same signature)."""
    folder = RunFolder(run)
    if not folder.is_run():
        raise PairsError(f"{folder.path}: not a quill run folder (no config.yaml)")
    if n < 2:
        raise PairsError(f"--n must be at least 2 (a pair needs two poems), got {n}")
    if not 0 <= form <= n:
        raise PairsError(f"--form must be between 0 and --n ({n}), got {form}")
    cfg = load_config(folder.config)
    suite = load_suite(cfg.eval.suite, cfg.eval.prompts)
    chosen_prompts, left_out = select_prompts(folder, prompts, [p.prompt for p in suite.prompts], max_prompts)
    stage, model_dir = folder.last_model()
    sampling = {k: v for k, v in cfg.generation.model_dump().items() if k in SAMPLING_KEYS}
    if max_new_tokens:
        sampling["max_new_tokens"] = max_new_tokens
    seed = int(sampling.pop("seed", 0) or 0)
    decodes = ["plain"] * (n - form) + ["form"] * form
    requests = [Request(p, "chat", seed + SEED_STRIDE * i + j, form=decodes[j] == "form")
                for i, p in enumerate(chosen_prompts) for j in range(n)]
    print(f"[pairs] {len(chosen_prompts)} prompts × {n} poems{f' ({form} form-aware)' if form else ''} from {stage} "
          f"({model_dir})"
          + (f"; left out: {_reasons(left_out)}" if left_out else ""))
    model, tokenizer, template = load_checkpoint(model_dir)[:3]
    rate = Rate()
    with tqdm(total=len(requests), desc="pairs", unit="poem") as bar:
        def progress(poems: int, tokens: int) -> None:
            bar.update(poems)
            bar.set_postfix(rate.add(poems, tokens), refresh=False)
        samples = (sampler or sample_requests)(model, tokenizer, template, requests,
                                               batch_size=batch_size or cfg.eval.batch_size, progress=progress,
                                               **sampling)
    kept, dropped = [], Counter()
    for i, prompt in enumerate(chosen_prompts):
        pair = best_and_worst(prompt, samples[i * n:(i + 1) * n], decodes)
        if text_key(pair["chosen"]) == text_key(pair["rejected"]):
            dropped["identical"] += 1
        elif pair["margin"] < min_margin:
            dropped["below_margin"] += 1
        else:
            kept.append(pair)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        for pair in kept:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    chosen_form = sum(p["chosen_decode"] == "form" for p in kept)
    print(f"[pairs] wrote {len(kept)} pairs to {out}; dropped {sum(dropped.values())} "
          f"(margin below {min_margin}: {dropped['below_margin']}, identical poems: {dropped['identical']})"
          + (f"; the form-aware poem chosen in {chosen_form}" if form else ""))
    return {"pairs": len(kept), "prompts": len(chosen_prompts), "dropped": dict(dropped),
            "left_out": dict(left_out), "stage": stage, "out": str(out), "chosen_form": chosen_form}


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v)
