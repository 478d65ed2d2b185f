"""Shared by the bench scripts: machine and version info, load average, peak memory, JSON results, tables."""
from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_POEMS = REPO.parent / "shared" / "data" / "pd_poems.jsonl.gz"


def resolve_data(path: str | None) -> Path:
    """A data path as given, else relative to the repository (the default lives in ../shared)."""
    p = Path(path) if path else DEFAULT_POEMS
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        p = REPO / p
    return p


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    """The ``text`` field of a .jsonl / .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = json.loads(line).get("text")
                if text:
                    out.append(text)
            if limit and len(out) >= limit:
                break
    return out


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    ram = None
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "python": platform.python_version(),
            # the vector and matrix extensions that decide a CPU's GEMM rate (the full list is in /proc/cpuinfo)
            "cpu_flags": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                                      "amx_tile", "amx_bf16") if f in flags.split()]}
    info["cpu_bf16"] = [f for f in info["cpu_flags"] if f in ("avx512_bf16", "amx_bf16", "avx512_fp16")]
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    except ImportError:
        pass
    return info


def versions() -> dict:
    return {p: _version(p) for p in ("torch", "transformers", "peft", "accelerate", "quill", "llama_cpp_python")}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def peak_rss_gb() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def envelope(name: str, **extra) -> dict:
    return {"bench": name, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "machine": machine_info(), "versions": versions(), **extra}


def write_result(name: str, result: dict, out: str | None = None) -> Path:
    """bench/results/NAME.json (or --out), and a copy under $OUT when a device run sets it."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    path.write_text(text + "\n", encoding="utf-8")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], path.name).write_text(text + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    """A Markdown table (pastes straight into docs/PERFORMANCE.md)."""
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells)])


def median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


class BenchRun:
    """The slice of quill's RunFolder that ``fit`` uses; remembers when each step was logged."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="quill-bench-")
        self.step_times: list[float] = []

    def checkpoint(self, name):
        return Path(self.folder) / "checkpoints" / name

    def log(self, rec):
        if "loss" in rec:
            self.step_times.append(time.perf_counter())

    def truncate_metrics(self, *a):
        pass
