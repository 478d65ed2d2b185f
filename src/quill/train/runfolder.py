"""The run folder: one place that knows its layout, its lock, and how metrics and summaries are written.

Layout (see docs/CONTRACTS.md): config.yaml, data/<stage>/, metrics.jsonl, tb/, <stage>/adapter,
<stage>/model, checkpoints/<stage>/, summary.json, samples.json. Small JSON files are written atomically
(temp file, fsync, rename) so a kill never leaves half a file behind.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from quill.errors import RunError


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    def data(self, stage: str) -> Path:
        return self.path / "data" / stage

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def model_dir(self, stage: str) -> Path:
        return self.path / stage / "model"

    def adapter_dir(self, stage: str) -> Path:
        return self.path / stage / "adapter"

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    # ---- state
    def summary(self) -> dict:
        return read_json(self.summary_path, default={"stages": {}, "stage_order": []})

    def update_summary(self, **fields) -> dict:
        s = self.summary()
        s.update(fields)
        write_json_atomic(self.summary_path, s)
        return s

    def log(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, stage: str, after_step: int) -> None:
        """On resume: drop what the killed process logged after its last checkpoint (it is logged again)."""
        kept = [r for r in self.read_metrics() if not (r.get("stage") == stage and r.get("step", 0) > after_step)]
        tmp = self.metrics.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.metrics)

    # ---- lock
    def unstarted(self) -> bool:
        """A quill run folder where no training began (a run that failed while preparing data): only the
        config, the lock, prepared data and empty logs. Anything else, or a folder that is not a run, is not."""
        if not self.config.exists():
            return False
        return all(p.name in {"config.yaml", ".lock", "data", "tb"} for p in self.path.iterdir())

    def lock(self) -> "RunLock":
        return RunLock(self.path / ".lock")


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
