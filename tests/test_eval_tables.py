"""sweep and compare without training: fake run folders (summary.json, config.yaml, eval.json)."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from quill.apps import sweep as sweep_mod
from quill.apps.sweep import grid_points, parse_grid, point_id, run_sweep
from quill.config import ConfigError
from quill.evaluate.compare import run_compare, run_row

FIX = Path(__file__).parent / "fixtures" / "eval"


def fake_finished_run(run: Path, cfg, val_loss: float = 2.0, with_eval: bool = True) -> None:
    """What training leaves behind, minus weights: config.yaml, summary.json, metrics.jsonl (+ eval.json)."""
    run.mkdir(parents=True, exist_ok=True)
    raw = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    stages = {s["name"]: {"kind": s["kind"], "train_loss": val_loss - 0.1, "val_loss_before": val_loss + 1,
                          "val_loss_after": val_loss, "test_loss": val_loss + 0.05, "tokens": 1000, "wall_s": 2.0,
                          "tokens_per_s": 500.0, "steps": 2} for s in raw["stages"]}
    (run / "summary.json").write_text(json.dumps({"model": raw["model"]["name"], "stages": stages, "complete": True,
                                                  "stage_order": list(stages)}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"stage": s, "step": k, "val_loss": val_loss + 1 - k / 2})
                                               + "\n" for s in stages for k in (0, 2)))
    if with_eval:
        m = {"rhymed_lines": 0.5, "meter_iambic": 0.25, "distinct_2": 0.9, "stopped": 1.0, "copied": 0.0}
        (run / "eval.json").write_text(json.dumps({"models": ["base", *stages], "metrics": {
            "base": {k: 0.1 for k in m}, **{s: m for s in stages}, "human": {"rhymed_lines": 0.6}}}))


def test_parse_grid_points_and_ids():
    g = parse_grid(["stages.dapt.train.lr=1e-4,5e-5", "stages.dapt.train.grad_accum=1,2", "x.flag=true"])
    assert g == {"stages.dapt.train.lr": [1e-4, 5e-5], "stages.dapt.train.grad_accum": [1, 2], "x.flag": [True]}
    pts = grid_points(g)
    assert len(pts) == 4 and pts[0] == {"stages.dapt.train.lr": 1e-4, "stages.dapt.train.grad_accum": 1, "x.flag": True}
    assert point_id(pts[0]) == "dapt.lr=0.0001_dapt.grad_accum=1_x.flag=True"
    with pytest.raises(ConfigError):
        parse_grid(["no-values"])


def test_sweep_three_points_then_rerun_trains_nothing(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, run_dir, base_dir):
        calls.append(run_dir.name)
        fake_finished_run(run_dir, cfg, val_loss=cfg.stages[0].train.lr * 100, with_eval=False)

    monkeypatch.setattr(sweep_mod, "_train", fake_train)
    files = run_sweep(FIX / "tiny.yaml", [], grid=["stages.dapt.train.lr=1e-2,5e-3,1e-3"], out=tmp_path / "sw",
                      with_eval=False)
    assert len(calls) == 3
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == 3
    assert [float(r["dapt val loss"]) for r in rows] == pytest.approx([1.0, 0.5, 0.1])
    for col in ("dapt batch", "dapt grad_accum", "dapt epochs", "dapt lr", "dapt train loss", "sft test loss",
                "wall_s", "tokens_per_s", "rhymed_lines"):
        assert col in rows[0], col
    md = files["md"].read_text()
    assert md.count("\n| dapt.lr=") == 3
    run_sweep(FIX / "tiny.yaml", [], grid=["stages.dapt.train.lr=1e-2,5e-3,1e-3"], out=tmp_path / "sw",
              with_eval=False)
    assert len(calls) == 3 and "trained 0 this time" in files["md"].read_text()


def test_sweep_needs_a_grid(tmp_path):
    with pytest.raises(ConfigError, match="nothing to sweep"):
        run_sweep(FIX / "tiny.yaml", [], grid=[], out=tmp_path, with_eval=False)


def test_compare_two_runs_one_table_and_page(tmp_path):
    cfg = yaml.safe_load((FIX / "tiny.yaml").read_text())
    fake_finished_run(tmp_path / "a", cfg, 2.0)
    other = {**cfg, "model": {"name": "tiny-gpt2"}}
    fake_finished_run(tmp_path / "b", other, 3.0, with_eval=False)
    files = run_compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "cmp")
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["run"] for r in rows] == ["a", "b"] and [r["model"] for r in rows] == ["tiny-llama", "tiny-gpt2"]
    assert rows[0]["rhymed_lines"] == "0.5" and rows[1]["rhymed_lines"] == ""
    page = files["html"].read_text()
    assert page.count("data:image/png;base64,") == 2          # val-loss chart and metric bars
    assert run_row(tmp_path / "a")["evaluated"] == "sft"


def test_compare_refuses_unfinished_runs(tmp_path):
    from quill.errors import QuillError
    with pytest.raises(QuillError, match="not finished"):
        run_compare([tmp_path], out=tmp_path / "cmp")
