"""The layer order of docs/ARCHITECTURE.md, checked on the source: each package imports only layers below it."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "quill"
LAYERS = {"__init__": 1, "errors": 1, "paths": 1, "files": 1, "network": 1, "config": 2, "run": 3, "verse": 3, "data": 4,
          "models": 5, "decoding": 6, "train": 7, "evaluate": 8, "apps": 9, "cli": 10}


def imported(path: Path) -> list[tuple[int, str, bool]]:
    """(line, name, inside a function) of every ``quill.*`` import in the file. ``from quill.x import y``
    gives ``quill.x`` and ``quill.x.y`` (a module or not: the checks keep the names they know)."""
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [] if node.module == "quill" else [node.module]
            out.extend((node.lineno, n, in_function) for n in names + [f"{node.module}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, in_function) for a in node.names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return [(line, name, local) for line, name, local in out if name.startswith("quill.")]


def test_every_package_imports_only_layers_below_it():
    files = sorted(SRC.rglob("*.py"))
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in files}
    assert tops <= set(LAYERS), f"a package without a layer: {sorted(tops - set(LAYERS))}"
    upward = []
    for path in files:
        rel = path.relative_to(SRC)
        mine = LAYERS[rel.parts[0].removesuffix(".py")]
        for line, name, _ in imported(path):
            target = name.split(".")[1]
            if LAYERS.get(target, 0) > mine:
                upward.append(f"{rel}:{line}: {name}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_decoding_is_one_package_and_the_apps_another():
    assert not (SRC / "generate").exists()
    assert (SRC / "decoding" / "engine.py").is_file() and (SRC / "apps" / "server.py").is_file()
    assert (SRC / "apps" / "web" / "index.html").is_file()


def test_no_function_local_quill_import_below_the_cli():
    # cli.py imports each command's module when that command runs (start-up time); below it, every module
    # imports what it needs at the top, so a cycle fails at import time instead of hiding in a function
    local = [f"{p.relative_to(SRC)}:{line}" for p in sorted(SRC.rglob("*.py")) if p.name != "cli.py"
             for line, _, local in imported(p) if local]
    assert not local, "function-local quill imports:\n" + "\n".join(local)


def test_no_module_over_300_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300]
    assert not long, "modules over 300 lines:\n" + "\n".join(long)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the quill modules it imports outside functions."""
    mods = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in SRC.rglob("*.py")}
    return {m: {n for _, n, local in imported(p) if not local and n in mods and n != m} for m, p in mods.items()}


def test_no_import_cycle():
    graph, state, cycles = _module_graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n):] + [m, n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
