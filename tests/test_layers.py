"""The layer order of docs/ARCHITECTURE.md, checked on the source: each package imports only layers below it."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "quill"
LAYERS = {"__init__": 1, "errors": 1, "paths": 1, "files": 1, "network": 1, "config": 2, "run": 3, "verse": 3, "data": 4,
          "models": 5, "decoding": 6, "train": 7, "evaluate": 8, "apps": 9, "cli": 10}


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``quill.*`` import in the file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "quill" else [f"quill.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in out if name.startswith("quill.")]


def test_every_package_imports_only_layers_below_it():
    files = sorted(SRC.rglob("*.py"))
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in files}
    assert tops <= set(LAYERS), f"a package without a layer: {sorted(tops - set(LAYERS))}"
    upward = []
    for path in files:
        rel = path.relative_to(SRC)
        mine = LAYERS[rel.parts[0].removesuffix(".py")]
        for line, name in imported(path):
            target = name.split(".")[1]
            if LAYERS.get(target, 0) > mine:
                upward.append(f"{rel}:{line}: {name}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_decoding_is_one_package_and_the_apps_another():
    assert not (SRC / "generate").exists()
    assert (SRC / "decoding" / "engine.py").is_file() and (SRC / "apps" / "server.py").is_file()
    assert (SRC / "apps" / "web" / "index.html").is_file()
