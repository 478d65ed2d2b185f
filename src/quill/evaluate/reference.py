"""Reading a run's prepared data for evaluation: the human reference poems and the copy-check corpus.

Reads the prepared splits through ``RunFolder.read_split`` (the run-folder contract), so the human
reference and the copy index need neither the data layer's code nor a model.
"""
from __future__ import annotations

import random
from pathlib import Path

from quill.evaluate.metrics.copying import NgramIndex
from quill.evaluate.poetry import score_poem
from quill.run import RunFolder

HUMAN_LIMIT = 200      # poems scored for the human reference; enough for stable means, fast to score


def record_text(rec: dict) -> str:
    """The poem in a record: ``text`` for poem records, the last assistant message for instruction records,
    the chosen answer for preference records."""
    if isinstance(rec.get("text"), str):
        return rec["text"]
    if isinstance(rec.get("chosen"), str):
        return rec["chosen"]
    for msg in reversed(rec.get("messages") or []):
        if msg.get("role") == "assistant":
            return msg.get("content") or ""
    return ""


def training_texts(run: RunFolder | Path, stages: list[str]) -> list[str]:
    """Every training text of every stage: what the model may have memorised."""
    run = RunFolder(run)
    return [t for s in stages for t in map(record_text, run.read_split(s, "train")) if t.strip()]


def build_copy_index(run: RunFolder | Path, stages: list[str]) -> NgramIndex:
    return NgramIndex(training_texts(run, stages))


def human_poems(run: RunFolder | Path, stages: list[str], limit: int = HUMAN_LIMIT,
                seed: int = 0) -> tuple[list[str], str]:
    """Held-out human poems: the first stage with a non-empty val (else test) split, in stage order.

    Stage 1's val split holds whole corpus poems; SFT completions are the fallback. A fixed-seed
    sample of at most ``limit`` keeps the reference stable between evals of the same run.
    """
    run = RunFolder(run)
    for stage in stages:
        for split in ("val", "test"):
            texts = [t for t in map(record_text, run.read_split(stage, split)) if t.strip()]
            if texts:
                if len(texts) > limit:
                    texts = random.Random(seed).sample(texts, limit)
                return texts, run.split(stage, split).relative_to(run.path).as_posix()
    return [], ""


def human_reference(run: RunFolder | Path, stages: list[str], index: NgramIndex | None = None,
                    limit: int = HUMAN_LIMIT) -> tuple[list[dict], dict]:
    """(per-poem metric dicts, {"source", "poems"}) for the held-out human poems ([] when there are none);
    ``poetry.aggregate`` / ``poetry.intervals`` turn the rows into the human column."""
    texts, source = human_poems(run, stages, limit)
    if not texts:
        return [], {"source": None, "poems": 0}
    return [score_poem(t, index=index) for t in texts], {"source": source, "poems": len(texts)}
