"""End to end on the 2-layer random Llama: train → `quill eval` → `quill sweep` (rerun trains nothing) → `quill compare`."""
import csv
import json
from pathlib import Path

import pytest

from quill.apps import sweep as sweep_mod
from quill.apps.sweep import run_sweep
from quill.config import load_config
from quill.evaluate.compare import run_compare
from quill.evaluate.poetry import METRIC_KEYS
from quill.evaluate.run import run_eval
from quill.train.pipeline import train

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "fixtures" / "eval" / "tiny.yaml"
FAST = ["stages.dapt.train.max_steps=1", "stages.sft.train.max_steps=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval-runs") / "tiny"
    train(load_config(TINY), run, base_dir=TINY.parent)
    return run


def test_eval_writes_report_files_with_every_metric(tiny_run):
    run_eval(tiny_run, quick=True, max_new_tokens=4)
    data = json.loads((tiny_run / "eval.json").read_text())
    assert data["models"] == ["base", "dapt", "sft", "sft+form"]     # the poet also decoded form-aware
    assert data["intervals"]["sft+form"].keys() >= {"poetic_score", "stopped"}
    for m in ("base", "dapt", "sft"):
        assert set(METRIC_KEYS) <= set(data["metrics"][m])
        for stage in ("dapt", "sft"):
            assert {"train", "val", "test"} <= set(data["losses"][m][stage])
    assert data["metrics"]["human"]["n"] > 0
    # training moved the weights: the trained models' losses differ from the base's
    assert data["losses"]["sft"]["sft"]["val"]["loss"] != data["losses"]["base"]["sft"]["val"]["loss"]
    page = (tiny_run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "| sft |" in (tiny_run / "report.md").read_text()


def test_sweep_three_points_and_rerun_trains_nothing(tmp_path, monkeypatch):
    calls = []
    real = sweep_mod._train
    monkeypatch.setattr(sweep_mod, "_train", lambda *a: (calls.append(a[1].name), real(*a)))
    grid = ["stages.dapt.train.lr=1e-2,5e-3,1e-3"]
    files = run_sweep(TINY, FAST, grid=grid, out=tmp_path / "sweep", with_eval=False)
    assert len(calls) == 3
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == 3 and all(float(r["dapt val loss"]) > 0 for r in rows)
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "sweep").glob("*/summary.json")}
    run_sweep(TINY, FAST, grid=grid, out=tmp_path / "sweep", with_eval=False)
    assert len(calls) == 3
    assert mtimes == {p: p.stat().st_mtime for p in (tmp_path / "sweep").glob("*/summary.json")}


def test_compare_two_runs(tiny_run, tmp_path):
    other = tmp_path / "other"
    train(load_config(TINY, FAST + ["model.name=tiny-gpt2"]), other, base_dir=TINY.parent)
    files = run_compare([tiny_run, other], out=tmp_path / "cmp")
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["model"] for r in rows] == ["tiny-llama", "tiny-gpt2"]
    assert "compare" in files["html"].read_text()
