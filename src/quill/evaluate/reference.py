"""Reading a run's prepared data for evaluation: the human reference poems and the copy-check corpus.

Reads RUN/data/<stage>/{train,val,test}.jsonl directly (the run-folder contract), so the human
reference and the copy index need neither the data layer's code nor a model.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from quill.evaluate.metrics.copying import NgramIndex
from quill.evaluate.poetry import score_poem

HUMAN_LIMIT = 200      # poems scored for the human reference; enough for stable means, fast to score


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def record_text(rec: dict) -> str:
    """The poem in a record: ``text`` for poem records, the last assistant message for instruction records."""
    if isinstance(rec.get("text"), str):
        return rec["text"]
    for msg in reversed(rec.get("messages") or []):
        if msg.get("role") == "assistant":
            return msg.get("content") or ""
    return ""


def load_split(run: Path, stage: str, split: str) -> list[dict]:
    return read_jsonl(Path(run) / "data" / stage / f"{split}.jsonl")


def training_texts(run: Path, stages: list[str]) -> list[str]:
    """Every training text of every stage: what the model may have memorised."""
    return [t for s in stages for t in map(record_text, load_split(run, s, "train")) if t.strip()]


def build_copy_index(run: Path, stages: list[str]) -> NgramIndex:
    return NgramIndex(training_texts(run, stages))


def human_poems(run: Path, stages: list[str], limit: int = HUMAN_LIMIT, seed: int = 0) -> tuple[list[str], str]:
    """Held-out human poems: the first stage with a non-empty val (else test) split, in stage order.

    Stage 1's val split holds whole corpus poems; SFT completions are the fallback. A fixed-seed
    sample of at most ``limit`` keeps the reference stable between evals of the same run.
    """
    for stage in stages:
        for split in ("val", "test"):
            texts = [t for t in map(record_text, load_split(run, stage, split)) if t.strip()]
            if texts:
                if len(texts) > limit:
                    texts = random.Random(seed).sample(texts, limit)
                return texts, f"data/{stage}/{split}.jsonl"
    return [], ""


def human_reference(run: Path, stages: list[str], index: NgramIndex | None = None,
                    limit: int = HUMAN_LIMIT) -> tuple[list[dict], dict]:
    """(per-poem metric dicts, {"source", "poems"}) for the held-out human poems ([] when there are none);
    ``poetry.aggregate`` / ``poetry.intervals`` turn the rows into the human column."""
    texts, source = human_poems(run, stages, limit)
    if not texts:
        return [], {"source": None, "poems": 0}
    return [score_poem(t, index=index) for t in texts], {"source": source, "poems": len(texts)}
