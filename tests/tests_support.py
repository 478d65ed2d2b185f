"""Helpers shared by tests (imported as a module: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading


def run_async(coro_fn, timeout: float):
    """``asyncio.run(coro_fn())`` in a fresh thread; returns its result or raises its error.

    A thread of its own because Playwright's sync API (the browser test) leaves an event loop running in
    the main thread for the rest of the session, and ``asyncio.run`` refuses to start inside it."""
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(asyncio.wait_for(coro_fn(), timeout))
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread
            box["error"] = err
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout + 10)
    if "error" in box:
        raise box["error"]
    assert "result" in box, "the async client did not finish"
    return box["result"]


def train_tiny(tmp_path_factory, config, name: str):
    """Train a tiny fixture config (``tests/fixtures/train/*.yaml``) into a fresh run folder, with TensorBoard."""
    from quill.config import load_config
    from quill.train.pipeline import train
    run = tmp_path_factory.mktemp("runs") / name
    train(load_config(config, ["tracking.report_to=[tensorboard]"]), run, base_dir=config.parent)
    return run


def quill(*args, env=None, check=True):
    """``python -m quill.cli ARGS`` offline, in a subprocess; fails the test with its output unless ``check=False``."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "quill.cli", *map(str, args)], capture_output=True, text=True, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"quill {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p
