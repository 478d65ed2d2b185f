"""The run folder: the one place that knows its layout, its lock, and how its files are read and written.

What a run folder holds (``ls -R runs/demo`` after ``quill demo`` and ``quill eval``)::

    config.yaml            the resolved config (written first: it makes a folder a run)
    .lock                  the pid of the process writing the run, while one is
    data/<stage>/          train.jsonl, val.jsonl, test.jsonl, then report.json (written last: "data ready");
                           a dpo stage's reference_logps.json (its frozen reference's log-probs, read on resume)
    tb/                    TensorBoard events (``tracking.report_to``, by default)
    metrics.jsonl          a row per logged step ("loss", "lr", ...) and per validation ("val_loss")
    checkpoints/<stage>/   the resume state of the stage in training, every ``train.save_every`` steps
                           (``<stage>.tmp`` / ``<stage>.old`` beside it while one is written); removed once
                           the stage is saved whole
    <stage>/adapter/       the stage's LoRA adapter (LoRA stages)
    <stage>/model/         the stage's model, loadable alone (template.json marks it saved)
    summary.json           model, stage_order, each stage's results (with "complete"), the base model's and
                           the poet's samples ("samples_base", "samples"), "complete" once every stage is done
    eval.json              ``quill eval``'s results, beside report.md and report.html
    arena.sqlite           ``quill serve``'s arena votes, when the run is the first one it serves
    export/<to>/           ``quill export``'s output by default (gguf: NAME-QUANT.gguf; ollama: that and
                           Modelfile; hf: a model folder)

JSON files and config.yaml are written atomically (``quill.files``): a kill leaves the old file or the new
one, at worst with an unused ``NAME.tmp-<pid>`` beside it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from quill.config import load_raw
from quill.errors import RunError
from quill.files import atomic_write_json, atomic_write_text, read_json, read_jsonl

MODEL_MARKER = "template.json"  # written by every save_model (quill.data.template.TEMPLATE_FILE)
DATA_MARKER = "report.json"     # written last by data.prepare.save_prepared


class RunFolder:
    """A run folder by its path (nothing is read or created until asked); a path itself (``os.PathLike``),
    so functions that take a run accept a RunFolder or a path alike."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data_root(self) -> Path:
        return self.path / "data"

    def data(self, stage: str) -> Path:
        return self.data_root / stage

    def split(self, stage: str, split: str) -> Path:
        return self.data(stage) / f"{split}.jsonl"

    def reference_logps(self, stage: str) -> Path:
        return self.data(stage) / "reference_logps.json"

    def model_dir(self, stage: str) -> Path:
        return self.path / stage / "model"

    def adapter_dir(self, stage: str) -> Path:
        return self.path / stage / "adapter"

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def export_dir(self, to: str) -> Path:
        return self.path / "export" / to

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    # ---- what is there
    def is_run(self) -> bool:
        return self.config.is_file()

    def raw_config(self) -> dict:
        """config.yaml as written ({} when absent), without validating it: enough to read stage names or
        hyper-parameters of a run made by another quill version."""
        return load_raw(self.config) if self.config.is_file() else {}

    def stage_order(self) -> list[str]:
        """The stages in training order: summary.json's ``stage_order``, else config.yaml's."""
        order = self.summary().get("stage_order")
        if order:
            return list(order)
        return [s["name"] for s in self.raw_config().get("stages") or [] if isinstance(s, dict) and s.get("name")]

    def data_ready(self, stage: str) -> bool:
        """The stage's prepared data was saved whole (resume loads it instead of preparing it again)."""
        return (self.data(stage) / DATA_MARKER).is_file()

    def read_split(self, stage: str, split: str) -> list[dict]:
        """The records of a prepared split ([] when the stage has none)."""
        return read_jsonl(self.split(stage, split))

    def has_model(self, stage: str) -> bool:
        return (self.model_dir(stage) / MODEL_MARKER).is_file()

    def last_model(self) -> tuple[str, Path]:
        """(stage, its model folder) of the last stage with a saved model: an unfinished run serves its
        latest finished stage."""
        order = self.stage_order()
        for stage in reversed(order):
            if self.has_model(stage):
                return stage, self.model_dir(stage)
        raise RunError(f"{self.path}: no stage has a saved model yet (expected {self.path}/<stage>/model, "
                       f"stages {order})")

    # ---- summary and eval
    def summary(self) -> dict:
        return read_json(self.summary_path, default={"stages": {}, "stage_order": []})

    def update_summary(self, **fields) -> dict:
        s = self.summary()
        s.update(fields)
        atomic_write_json(self.summary_path, s)
        return s

    def complete(self) -> bool:
        """Every stage trained and the final samples written (a sweep does not train it again)."""
        return bool(self.summary().get("complete"))

    def read_eval(self) -> dict:
        return read_json(self.eval_path, default={})

    def write_eval(self, data: dict) -> None:
        atomic_write_json(self.eval_path, data)

    # ---- metrics
    def log(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """The logged rows; a line a killed process left half-written is skipped."""
        return read_jsonl(self.metrics, skip_broken=True)

    def truncate_metrics(self, stage: str, after_step: int) -> None:
        """On resume: drop what the killed process logged after its last checkpoint (it is logged again)."""
        kept = [r for r in self.read_metrics() if not (r.get("stage") == stage and r.get("step", 0) > after_step)]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- lock
    def unstarted(self) -> bool:
        """A quill run folder where no training began (a run that failed while preparing data): only the
        config, the lock, prepared data and empty logs. Anything else, or a folder that is not a run, is not."""
        if not self.config.exists():
            return False
        before_training = {self.config.name, self.lock_path.name, self.main_token.name, self.data_root.name,
                           self.tb.name}
        return all(p.name in before_training for p in self.path.iterdir())

    @property
    def main_token(self) -> Path:
        """Written by the main process of a multi-process run: the others look for it to learn whether they see
        the main process's copy of this folder (one shared disk) or a copy of their own (``train.nodes``)."""
        return self.path / ".main-token"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def lock(self) -> "RunLock":
        return RunLock(self.lock_path)


class RunLock:
    """Refuses a second process writing the same run folder (instead of interleaving two runs).

    The lock file holds the owner's pid; a lock whose process is gone (a killed run) is taken over.
    """

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid and _alive(pid) and pid != os.getpid():
                    raise RunError(f"{self.path.parent}: another quill process (pid {pid}) is writing this run")
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {time.time():.0f}\n")
            self.held = True
            return self
        raise RunError(f"{self.path}: could not take the run lock")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
