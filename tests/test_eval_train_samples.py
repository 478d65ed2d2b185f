"""Training-time samples: every evaluation scores the fixed prompts (metrics.jsonl ``poetic_score``, TensorBoard)."""
import json
from pathlib import Path

import yaml

from quill.config import GenerationConfig, load_config
from quill.train.pipeline import train
from quill.train.samples import EvalSamples, samples_row

TINY = Path(__file__).parent / "fixtures" / "eval" / "tiny.yaml"
PROMPTS = ["Write a haiku about the moon", "Write a poem about the sea and the sky"]


def test_eval_samples_scores_the_prompts_in_one_batch(tiny_llama):
    model, tok, tpl = tiny_llama
    s = EvalSamples(model, tok, tpl, PROMPTS, GenerationConfig(), max_new_tokens=4)
    row = s("dapt", 3)
    assert set(row) == {"poetic_score"} and 0.0 <= row["poetic_score"] <= 1.0
    assert [x["prompt"] for x in s.last] == PROMPTS and all(isinstance(x["finished"], bool) for x in s.last)
    assert s.checks[0] == {"form": "haiku", "lines": 3, "topic": ["moon"]}
    first = [x["text"] for x in s.last]
    s("dapt", 4)
    assert [x["text"] for x in s.last] == first          # fixed seeds: the curve shows the model, not the dice
    assert model.training is False
    assert samples_row(None, "dapt", 1) == {}


def _config(tmp_path: Path, train_samples: int) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["eval"].update({"prompts": PROMPTS, "train_samples": train_samples, "train_max_new_tokens": 4})
    cfg["tracking"] = {"report_to": ["tensorboard"]}
    for st in cfg["stages"]:
        st["data"]["source"] = str(TINY.parent / st["data"]["source"])
        st["train"]["eval_every"] = 1
    path = tmp_path / f"tiny-{train_samples}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _eval_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def test_every_evaluation_logs_the_poetic_score_and_zero_turns_it_off(tmp_path):
    run = train(load_config(_config(tmp_path, 2)), tmp_path / "on")
    rows = _eval_rows(run)
    assert {r["stage"] for r in rows} == {"dapt", "sft"} and len(rows) >= 4    # before, step 1, after; per stage
    assert all(0.0 <= r["poetic_score"] <= 1.0 for r in rows)
    events = list((run / "tb").rglob("events.out.tfevents*"))
    assert events and any(b"eval/poetic_score" in p.read_bytes() for p in events)
    off = train(load_config(_config(tmp_path, 0)), tmp_path / "off")
    assert all("poetic_score" not in r for r in _eval_rows(off))
