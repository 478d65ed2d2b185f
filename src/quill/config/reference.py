"""The config reference, generated from the typed config: every key of a pipeline YAML, its type, default,
bounds and description, read from the pydantic models, so docs/CONFIG.md cannot fall behind the code.

Regenerate with ``python -m quill.config.reference > docs/CONFIG.md`` (tests/test_docs.py checks it is current).
"""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from quill.config import PipelineConfig

COMMAND = "python -m quill.config.reference > docs/CONFIG.md"
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
           ("max_length", "length <="))


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The config model in an annotation (``X`` or ``list[X]``) and the path suffix ('[]' for a list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if typing.get_origin(annotation) is list:
        inner, _ = _nested(typing.get_args(annotation)[0])
        return inner, "[]"
    return None, ""


def config_models(model: type[BaseModel] = PipelineConfig, path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of every config model under ``model``, depth first in field order."""
    out = [(path, model)]
    for name, field in model.model_fields.items():
        inner, suffix = _nested(field.annotation)
        if inner is not None:
            out += config_models(inner, f"{path}.{name}{suffix}" if path else f"{name}{suffix}")
    return out


def _literal_choices(annotation: Any) -> list[Any]:
    """Every Literal value inside an annotation (unions and lists included)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [c for arg in typing.get_args(annotation) for c in _literal_choices(arg)]


def type_name(annotation: Any) -> str:
    """A readable type: ``int | None``, ``list[str]``; a Literal shows as the type of its values."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(v).__name__ for v in typing.get_args(annotation)))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(type_name(a) for a in typing.get_args(annotation)))
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    """Allowed values: Literal choices, numeric bounds and length limits from the field's metadata."""
    parts = []
    choices = _literal_choices(field.annotation)
    if choices:
        parts.append(("items: " if typing.get_origin(field.annotation) is list else "one of ")
                     + ", ".join(f"`{c}`" for c in choices))
    for meta in field.metadata:  # annotated_types' Gt, Ge, Lt, Le, MinLen, MaxLen
        parts += [f"{sign} {getattr(meta, attr)}" for attr, sign in _BOUNDS if getattr(meta, attr, None) is not None]
    return ", ".join(parts)


def _yaml(value: Any, inner: bool = False) -> str:
    """A value as YAML flow style spells it (strings inside a list quoted where they need it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v, True)}" for k, v in value.items()) + "}"
    text = str(value)
    return f'"{text}"' if inner and any(c in text for c in ' ,:[]{}#"') else text


def default(field: FieldInfo) -> str:
    """The default as YAML would spell it (default_factory called); 'required' or 'section' where there is none."""
    if field.is_required():
        return "*required*"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "*section*"
    return f"`{_yaml(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(path: str, model: type[BaseModel]) -> str:
    """One model's table: a row per field with its dotted key."""
    title = f"`{path}`" if path else "top level"
    rows = [f"## {title}", ""]
    doc = model.__dict__.get("__doc__")
    if doc:
        rows += [" ".join(doc.split()), ""]
    rows += ["| key | type | default | allowed / bounds | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        inner, suffix = _nested(field.annotation)
        description = field.description or ""
        if inner is not None:
            description += f" (see `{key}{suffix}`)"
        rows.append(" | ".join(["", f"`{key}`", f"`{_cell(type_name(field.annotation))}`", default(field),
                                _cell(bounds(field)), _cell(description), ""]).strip())
    return "\n".join(rows) + "\n"


def config_reference() -> str:
    """The whole reference as Markdown: a header, then one section per config model."""
    head = ["# Config reference", "",
            f"Generated from the typed config (`src/quill/config/`); do not edit by hand. Regenerate: `{COMMAND}`.",
            "", "Every key of a pipeline YAML file, with its dotted path (`stages[]` is each entry of `stages`; "
            "`--set` addresses a stage by name or index: `stages.dapt.train.lr=5e-5`, `stages[1].train.epochs=3`). "
            "Unknown keys are errors.", ""]
    return "\n".join(head + [section(path, model) for path, model in config_models()])


if __name__ == "__main__":
    print(config_reference(), end="")
