"""Crash-safe runs: SIGKILL during a checkpoint write (begin, weights, optimizer, rename) and during an eval
leaves a checkpoint that loads, and ``quill resume`` finishes with the losses of an uninterrupted run; a full
disk while saving is one clear line and keeps the previous checkpoint; two runs on one folder are refused.

Kept affordable: one stage of the tiny two-layer Llama, 3 optimizer steps, a checkpoint after every step;
the uninterrupted reference runs once per module. Faults fire at the SECOND checkpoint (``@2``), so a
good one exists to fall back to; ``eval@2`` fires in the step-2 validation pass (step 1 is checkpointed).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quill.errors import RunError
from quill.train.checkpoint import find_checkpoint

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "fixtures" / "train" / "tiny.yaml"
SETS = ["--set", "stages.dapt.train.max_steps=3", "--set", "stages.dapt.train.save_every=1",
        "--set", "stages.dapt.train.eval_every=2", "--set", "eval.prompts=[]"]


def only_stage(config: Path, stage: str, folder: Path) -> Path:
    """``config`` with only one of its stages, its data path made absolute, written into ``folder``."""
    raw = yaml.safe_load(config.read_text())
    raw["stages"] = [s for s in raw["stages"] if s["name"] == stage]
    raw["stages"][0]["data"]["source"] = str(config.parent / raw["stages"][0]["data"]["source"])
    path = folder / f"{stage}_only.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def one_stage(tmp_path_factory) -> Path:
    """tiny.yaml with only its DAPT stage (halves every run)."""
    return only_stage(TINY, "dapt", tmp_path_factory.mktemp("cfg"))


def quill(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "QUILL_FAULT"}
    e.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "quill.cli", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=300)


def losses(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {name: {k: st.get(k) for k in ("train_loss", "val_loss_before", "val_loss_after", "steps")}
            for name, st in s["stages"].items()}


@pytest.fixture(scope="module")
def reference(one_stage, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("ref") / "run"
    p = quill("train", one_stage, "--run-dir", run, *SETS)
    assert p.returncode == 0, p.stderr[-3000:]
    return losses(run)


def assert_checkpoint_loads(folder: Path, step: int) -> None:
    import torch
    from safetensors.torch import load_file
    assert (folder / "state.json").is_file(), sorted(os.listdir(folder))
    assert json.loads((folder / "state.json").read_text())["step"] == step
    assert load_file(str(folder / "trainable.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt"):
        assert torch.load(folder / name, weights_only=True)
    assert load_file(str(folder / "rng-0.safetensors"))


@pytest.mark.parametrize("point", ["checkpoint:begin@2", "checkpoint:weights@2", "checkpoint:optimizer@2",
                                   "checkpoint:rename@2", "eval@2"])
def test_kill_during_save_or_eval_then_resume_matches(point, one_stage, reference, tmp_path):
    run = tmp_path / "run"
    p = quill("train", one_stage, "--run-dir", run, *SETS, env={"QUILL_FAULT": point})
    assert p.returncode == -9, f"expected SIGKILL at {point}, got {p.returncode}: {p.stderr[-2000:]}"
    found = find_checkpoint(run / "checkpoints" / "dapt")
    assert found is not None, f"no complete checkpoint after a kill at {point}"
    assert_checkpoint_loads(found, step=1)  # the last good one: step 1 (the kill hit the step-2 write/eval)
    r = quill("resume", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 1" in r.stdout + r.stderr
    got = losses(run)
    for stage, values in reference.items():
        for key, value in values.items():
            assert got[stage][key] == pytest.approx(value, abs=1e-6), (point, stage, key)


def test_full_disk_while_saving_is_one_clear_line_and_keeps_the_previous_checkpoint(one_stage, tmp_path,
                                                                                      monkeypatch):
    import quill.train.checkpoint as ckpt
    from quill.config import load_config
    from quill.train.pipeline import train

    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, *a, **k):
        if filename.endswith("trainable.safetensors"):
            calls.append(filename)
            if len(calls) == 2:  # the second checkpoint: the disk fills up mid-write
                real(tensors, filename, *a, **k)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, *a, **k)
    monkeypatch.setattr(ckpt, "save_file", save_file)
    monkeypatch.delenv("QUILL_FAULT", raising=False)
    cfg = load_config(one_stage, ["stages.dapt.train.max_steps=3", "stages.dapt.train.save_every=1",
                                  "eval.prompts=[]", "tracking.report_to=[]"])
    run = tmp_path / "run"
    with pytest.raises(RunError) as err:
        train(cfg, run)
    msg = str(err.value)
    folder = run / "checkpoints" / "dapt"
    assert "\n" not in msg and msg.startswith(f"no space left on device while saving checkpoint {folder}"), msg
    assert not (run / "checkpoints" / "dapt.tmp").exists(), "partial checkpoint left behind"
    assert find_checkpoint(folder) == folder
    assert_checkpoint_loads(folder, step=1)
    assert not (run / ".lock").exists(), "the run lock outlived the failed run"


def test_disk_full_detection_covers_torch_and_safetensors_errors():
    from quill.train.checkpoint import _disk_full
    assert _disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert _disk_full(RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed "
                                   "writing file data/0: file write failed"))
    assert _disk_full(Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull })'))
    assert not _disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not _disk_full(ValueError("shape mismatch"))


def test_second_run_on_a_locked_folder_is_refused(one_stage, tmp_path):
    from quill.run import RunFolder
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("the other run's file")
    (run / "config.yaml").write_text(one_stage.read_text())  # so `quill resume` gets as far as the lock
    lock = RunFolder(run).lock().acquire()
    try:
        for args in (["train", one_stage, "--run-dir", run, "--overwrite", *SETS], ["resume", run]):
            p = quill(*args)
            assert p.returncode != 0
            lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            assert lines and f"pid {os.getpid()}" in lines[-1], p.stderr[-2000:]
            assert "Traceback" not in p.stderr
        assert (run / "keep.txt").exists(), "--overwrite deleted a folder another process holds"
    finally:
        lock.release()


DPO_SETS = ["--set", "stages.dpo.train.max_steps=3", "--set", "stages.dpo.train.save_every=1",
            "--set", "stages.dpo.train.eval_every=2", "--set", "eval.prompts=[]"]


@pytest.fixture(scope="module")
def dpo_stage(tmp_path_factory) -> Path:
    """tiny-dpo.yaml with only its dpo stage (on the tiny Llama itself)."""
    return only_stage(TINY.parent / "tiny-dpo.yaml", "dpo", tmp_path_factory.mktemp("cfg"))


def test_kill_during_a_dpo_stage_then_resume_matches_and_reads_the_reference(dpo_stage, tmp_path):
    """A dpo stage killed in its second checkpoint resumes from the first with the uninterrupted losses, and
    reads its frozen reference's log-probs from the run folder instead of computing them again."""
    ref_run = tmp_path / "ref"
    p = quill("train", dpo_stage, "--run-dir", ref_run, *DPO_SETS)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "reference log-probs computed" in p.stdout
    run = tmp_path / "run"
    p = quill("train", dpo_stage, "--run-dir", run, *DPO_SETS, env={"QUILL_FAULT": "checkpoint:weights@2"})
    assert p.returncode == -9, p.stderr[-2000:]
    assert (run / "data" / "dpo" / "reference_logps.json").is_file()
    r = quill("resume", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 1" in r.stdout + r.stderr and "reference log-probs read" in r.stdout
    got, want = losses(run), losses(ref_run)
    for key, value in want["dpo"].items():
        assert got["dpo"][key] == pytest.approx(value, abs=1e-6), key
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    margins, ref_margins = ([r["rewards/margins"] for r in rs if "rewards/margins" in r] for rs in (rows, ref_rows))
    assert len(ref_margins) == 3 and margins == pytest.approx(ref_margins, abs=1e-6)
