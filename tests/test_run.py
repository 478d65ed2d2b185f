"""quill.run.RunFolder: the layout every layer reads through (stage order, models, data, summary, eval,
metrics), and quill.run / quill.files stay low layers."""
import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

import quill
from quill.data.prepare import PreparedData, load_prepared, save_prepared
from quill.data.template import TEMPLATE_FILE
from quill.errors import RunError
from quill.run import MODEL_MARKER, RunFolder

SRC = Path(quill.__file__).parent


def make_run(tmp_path, stages=("dapt", "sft")) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(yaml.safe_dump({"name": "t", "stages": [{"name": s} for s in stages]}))
    return run


def save_fake_model(run: RunFolder, stage: str) -> None:
    run.model_dir(stage).mkdir(parents=True, exist_ok=True)
    (run.model_dir(stage) / MODEL_MARKER).write_text("{}")


def test_stage_order_from_summary_else_config(tmp_path):
    run = make_run(tmp_path)
    assert run.is_run() and run.stage_order() == ["dapt", "sft"]
    run.update_summary(stage_order=["sft", "dapt"])
    assert run.stage_order() == ["sft", "dapt"]
    assert RunFolder(tmp_path / "nothing").stage_order() == [] and not RunFolder(tmp_path / "nothing").is_run()


def test_last_model_is_the_latest_saved_stage(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(RunError, match="no stage has a saved model"):
        run.last_model()
    save_fake_model(run, "dapt")
    run.model_dir("sft").mkdir(parents=True)               # a model folder without its marker is not saved
    assert run.last_model() == ("dapt", run.model_dir("dapt"))
    save_fake_model(run, "sft")
    assert run.last_model() == ("sft", run.path / "sft" / "model")
    assert MODEL_MARKER == TEMPLATE_FILE                   # what save_model writes is what marks a model


def test_prepared_data_is_ready_only_once_its_report_is_written(tmp_path):
    run = make_run(tmp_path)
    prepared = PreparedData("poems", {"train": [{"text": "a"}], "val": [], "test": [{"text": "b"}]}, {"rows_in": 2})
    assert not run.data_ready("dapt") and run.read_split("dapt", "train") == []
    save_prepared(prepared, run.data("dapt"))
    assert run.data_ready("dapt") and run.read_split("dapt", "test") == [{"text": "b"}]
    assert load_prepared(run.data("dapt")).report["rows_in"] == 2
    assert sorted(p.name for p in run.data("dapt").iterdir()) == ["report.json", "test.jsonl", "train.jsonl",
                                                                  "val.jsonl"]


def test_saving_data_again_removes_the_marker_until_the_splits_are_written(tmp_path, monkeypatch):
    import quill.data.prepare as prepare
    run = make_run(tmp_path)
    prepared = PreparedData("poems", {"train": [{"text": "a"}], "val": [], "test": []}, {})
    save_prepared(prepared, run.data("dapt"))

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(prepare, "atomic_open", fail)
    with pytest.raises(OSError):
        save_prepared(prepared, run.data("dapt"))
    assert not run.data_ready("dapt")


def test_summary_eval_and_complete(tmp_path):
    run = make_run(tmp_path)
    assert run.summary() == {"stages": {}, "stage_order": []} and run.read_eval() == {} and not run.complete()
    run.update_summary(model="m", stages={"dapt": {"complete": True}})
    run.update_summary(complete=True)
    assert json.loads(run.summary_path.read_text()) == {"stages": {"dapt": {"complete": True}}, "stage_order": [],
                                                        "model": "m", "complete": True}
    assert run.complete()
    run.write_eval({"models": ["base"]})
    assert run.read_eval() == {"models": ["base"]} and run.eval_path == run.path / "eval.json"


def test_metrics_log_read_and_truncate(tmp_path):
    run = make_run(tmp_path)
    for stage, step in (("dapt", 1), ("dapt", 2), ("dapt", 3), ("sft", 3)):
        run.log({"stage": stage, "step": step})
    with open(run.metrics, "a") as f:
        f.write('{"stage": "dapt", "st')                    # a killed process's last line
    assert len(run.read_metrics()) == 4
    run.truncate_metrics("dapt", after_step=1)
    assert run.read_metrics() == [{"stage": "dapt", "step": 1}, {"stage": "sft", "step": 3}]
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_unstarted_and_lock(tmp_path):
    run = make_run(tmp_path)
    run.data("dapt").mkdir(parents=True)
    with run.lock():
        assert run.unstarted() and (run.path / ".lock").is_file()
    assert not (run.path / ".lock").exists()
    run.update_summary(stage_order=["dapt"])
    assert not run.unstarted()


def test_a_run_folder_is_a_path(tmp_path):
    run = make_run(tmp_path)
    assert Path(run) == run.path and RunFolder(run).path == run.path


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
    return out


@pytest.mark.parametrize("module, allowed", [
    ("run.py", {"quill.config", "quill.errors", "quill.files", "quill.paths"}),
    ("files.py", {"quill.errors"}),
])
def test_run_and_files_are_low_layers(module, allowed):
    imports = _imports(SRC / module)
    assert {m for m in imports if m.startswith("quill")} <= allowed
    assert all(m.split(".")[0] in sys.stdlib_module_names for m in imports if not m.startswith("quill")), imports
    assert not (SRC / "train" / "runfolder.py").exists()
