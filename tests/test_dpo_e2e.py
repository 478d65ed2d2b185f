"""A run with sft then dpo on the tiny Llama: the run folder, the logged DPO statistics, and what ``quill eval``
loads from it."""
import json
from pathlib import Path

import pytest

from quill.config import load_config
from quill.evaluate.run import model_loaders, split_losses
from quill.run import RunFolder
from tests_support import train_tiny

pytestmark = pytest.mark.slow
TINY_DPO = Path(__file__).parent / "fixtures" / "train" / "tiny-dpo.yaml"


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    return train_tiny(tmp_path_factory, TINY_DPO, "tiny-dpo")


def test_sft_then_dpo_writes_the_run_folder(dpo_run):
    for rel in ["data/dpo/train.jsonl", "data/dpo/report.json", "dpo/adapter/adapter_model.safetensors",
                "dpo/model/model.safetensors", "dpo/model/template.json", "sft/model/template.json"]:
        assert (dpo_run / rel).exists(), rel
    s = json.loads((dpo_run / "summary.json").read_text())
    assert s["complete"] and s["stage_order"] == ["sft", "dpo"]
    st = s["stages"]["dpo"]
    assert st["kind"] == "dpo" and st["steps"] == 3 and st["truncated"] == {}
    assert st["val_loss_before"] is not None and st["val_loss_after"] is not None
    report = json.loads((dpo_run / "data/dpo/report.json").read_text())
    assert report["dropped"] == {"missing_chosen": 1, "missing_rejected": 1, "same_answers": 1}
    assert report["tokenized"]["train"]["pairs"] == report["splits"]["train"]


def test_dpo_statistics_are_logged_per_step(dpo_run):
    rows = [r for r in RunFolder(dpo_run).read_metrics() if r["stage"] == "dpo" and "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # step 1: policy == reference
    assert rows[-1]["rewards/margins"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for f in (dpo_run / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f.parent))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", []))
    assert "dpo/rewards/margins" in tags and "dpo/train_loss" in tags


def test_eval_loads_the_dpo_model_and_measures_its_chosen_loss(dpo_run):
    cfg = load_config(RunFolder(dpo_run).config)
    loaders = dict(model_loaders(dpo_run, cfg, ["sft", "dpo"]))
    assert list(loaders) == ["base", "sft", "dpo"]
    model, tok, tpl = loaders["dpo"]()
    losses = split_losses(model, tok, tpl, dpo_run, cfg, ["dpo"])
    assert losses["dpo"]["train"]["loss"] > 0 and losses["dpo"]["val"]["tokens"] > 0
