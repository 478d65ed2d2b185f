"""The sample suite: a fixed, versioned list of prompts, each with the checks its answer is scored on.

Versioned because a report compares runs made weeks apart: ``suite_v1.json`` is never edited,
a new set of prompts is ``suite_v2.json`` and eval.json records which one was used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quill.config import REFERENCE_PROMPTS
from quill.verse.adherence import FORMS

DEFAULT_SUITE = "suite_v1"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    prompt: str
    mode: str = "chat"                 # "chat": through the template as a user message; "raw": continued as is
    checks: dict = field(default_factory=dict)
    reference: bool = False            # one of the reference project's two prompts

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "mode": self.mode, "checks": dict(self.checks),
                "reference": self.reference}


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    prompts: list[SuitePrompt]

    def quick(self) -> "Suite":
        """The reference's two prompts only (``quill eval --quick``)."""
        return Suite(self.name + "-quick", self.version, [p for p in self.prompts if p.reference])


def _check(p: dict, where: str) -> SuitePrompt:
    for key in ("id", "prompt"):
        if not isinstance(p.get(key), str) or not p[key]:
            raise ValueError(f"{where}: prompt needs a non-empty '{key}'")
    mode = p.get("mode", "chat")
    if mode not in ("chat", "raw"):
        raise ValueError(f"{where}: {p['id']}: mode must be chat or raw")
    checks = dict(p.get("checks") or {})
    unknown = set(checks) - {"form", "lines", "topic"}
    if unknown:
        raise ValueError(f"{where}: {p['id']}: unknown checks {sorted(unknown)}")
    if checks.get("form") is not None and checks["form"] not in FORMS:
        raise ValueError(f"{where}: {p['id']}: unknown form {checks['form']!r}")
    return SuitePrompt(p["id"], p["prompt"], mode, checks, bool(p.get("reference", False)))


def load_suite(name: str | None = "default", extra_prompts: list[str] | None = None) -> Suite:
    """Load a packaged suite by name (``default`` = the newest) or a JSON file path.

    ``name=None`` gives only ``extra_prompts`` (the config's ``eval.prompts``, chat mode, no checks);
    extra prompts not already in the suite are appended, so a run's own demo prompts are scored too.
    """
    if name is None:
        prompts: list[SuitePrompt] = []
        suite_name, version = "prompts", 0
    else:
        path = Path(name) if name.endswith(".json") else _HERE / f"{DEFAULT_SUITE if name == 'default' else name}.json"
        if not path.exists():
            raise ValueError(f"unknown eval suite {name!r} (no {path})")
        raw = json.loads(path.read_text(encoding="utf-8"))
        prompts = [_check(p, path.name) for p in raw["prompts"]]
        suite_name, version = raw["name"], int(raw["version"])
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"suite {suite_name}: duplicate prompt ids")
    known = {p.prompt for p in prompts}
    for i, text in enumerate(extra_prompts or []):
        if text not in known:
            prompts.append(SuitePrompt(f"extra-{i}", text, "chat", {}, text in REFERENCE_PROMPTS))
            known.add(text)
    return Suite(suite_name, version, prompts)
