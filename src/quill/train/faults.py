"""Fault injection for crash-safety tests: ``QUILL_FAULT=<point>[@<n>]`` kills this process with SIGKILL
the n-th time (default first) execution passes ``<point>``. Unset (always, outside tests) it does nothing.

Points: ``step:<stage>:<k>`` (after optimizer step k), ``checkpoint:<phase>`` (inside a checkpoint write:
``begin``, ``weights``, ``optimizer``, ``rename``), ``eval`` (in the middle of a validation pass).
"""
from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("QUILL_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
