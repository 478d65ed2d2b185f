"""``quill data inspect CONFIG``: see exactly what each stage will train on, before training.

For every stage: the data report (rows in/out, drops by reason, split sizes), a token-length histogram
and a few examples formatted exactly as training will see them, with the tokens that carry loss shown
in ``[[…]]`` (open-instruct's debug view, the cure for "completion-only masking masked everything").
DAPT examples carry loss on every token, so they are shown as text with the EOS the packer appends.

Relative data paths are looked up in the current directory first, then in the config file's folder
(so ``quill data inspect configs/x.yaml`` works from the repository root and from ``configs/``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from typing import Callable

from quill.config import ConfigError, ModelConfig, PipelineConfig, StageConfig, config_base_dir, load_config
from quill.data.encode import encode_examples
from quill.data.pack import IGNORE_INDEX  # defined once, in pack.py
from quill.data.prepare import PreparedData, prepare_stages
from quill.data.report import format_report, length_stats
from quill.data.template import encode_text, template_for
from quill.errors import QuillError

TokenizerLoader = Callable[[ModelConfig], object]   # the CLI passes quill.models' loader (a layer above data)

SAMPLE_ROWS = 2000        # token lengths are measured on an evenly spread sample of at most this many rows
MAX_EXAMPLE_CHARS = 1500  # long poems are cut in the printed example (the count of tokens stays exact)


def run_inspect(config_path: str | Path, overrides: list[str] | None = None, as_json: bool = False,
                examples: int = 2, stage: str | None = None, load_tokenizer: TokenizerLoader | None = None) -> int:
    """Print the report (text or JSON) for each stage (or only ``stage``); returns the exit status.
    ``load_tokenizer(model_config)`` gives the token statistics and examples (none without it)."""
    cfg = load_config(config_path, overrides)
    stages = _select(cfg, stage)
    base_dir = config_base_dir(config_path)
    # data first: a bad source fails in a second, before the (slow) tokenizer load; every stage is prepared
    # (even with --stage) because the stages share one held-out set, as in training
    prepared_all = prepare_stages(cfg.stages, base_dir)
    prepared_stages = [(st, prepared_all[st.name]) for st in stages]
    tokenizer, template, note = _load_tokenizer(cfg, load_tokenizer)
    results: dict[str, dict] = {}
    for st, prepared in prepared_stages:
        lengths = token_lengths(prepared, tokenizer, template) if tokenizer is not None else {}
        shown = [format_example(prepared.kind, rec, tokenizer, template, st.train.block_size)
                 for rec in prepared.splits["train"][:max(0, examples)]] if tokenizer is not None else []
        if as_json:
            results[st.name] = {**{k: prepared.report.get(k) for k in (
                "source", "kind", "rows_in", "rows_out", "dropped", "splits", "special_tokens_removed",
                "pairs_by_kind", "mix", "truth", "held_out_across_stages") if k in prepared.report},
                "token_lengths": {k: length_stats(v) for k, v in lengths.items()}, "examples": shown}
            continue
        print(f"=== stage {st.name} ({st.kind}, data: {st.data.kind}) ===")
        print(format_report(prepared.report, lengths, block_size=st.train.block_size))
        if note:
            print(note)
        for i, text in enumerate(shown, start=1):
            print(f"--- example {i} ---\n{text}")
        print()
    if as_json:
        if note:
            results["_note"] = note  # type: ignore[assignment]
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


def _select(cfg: PipelineConfig, stage: str | None) -> list[StageConfig]:
    if stage is None:
        return list(cfg.stages)
    try:
        return [cfg.stage(stage)]
    except KeyError:
        raise ConfigError(f"--stage {stage}: no such stage (have {', '.join(s.name for s in cfg.stages)})") from None


def _load_tokenizer(cfg: PipelineConfig, load: TokenizerLoader | None):
    """(tokenizer, template, note): the report is still useful without a tokenizer, so a model that cannot
    be loaded (offline hub id, say) costs the token statistics, not the whole inspection."""
    if load is None:
        return None, None, "(no token statistics: no tokenizer loader given)"
    try:
        tokenizer = load(cfg.model)
        return tokenizer, template_for(tokenizer, cfg.model.template), None
    except (QuillError, ImportError, OSError) as err:
        print(f"quill: note: no token statistics: {err}", file=sys.stderr)
        return None, None, f"(no token statistics: {err})"


def _sample(rows: list[dict], n: int = SAMPLE_ROWS) -> list[dict]:
    if len(rows) <= n:
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def token_lengths(prepared: PreparedData, tokenizer, template) -> dict[str, list[int]]:
    """Tokens per example (untruncated, EOS/end-of-turn included) for a sample of each non-empty split, tokenized
    by training's own ``encode_examples`` (examples it would skip are not counted)."""
    out: dict[str, list[int]] = {}
    for name, rows in prepared.splits.items():
        if not rows:
            continue
        examples, _ = encode_examples(prepared.kind, _sample(rows), tokenizer, template, max_length=10 ** 9)
        out[name] = [len(ex.input_ids) for ex in examples]
    return out


def format_example(kind: str, record: dict, tokenizer, template, block_size: int) -> str:
    """One training example as text, loss-carrying tokens in ``[[…]]``; with a token count line."""
    if kind == "poems":
        ids = encode_text(tokenizer, record["text"])
        body = _clip(record["text"]) + f"[[{tokenizer.eos_token}]]"
        return body + f"\n({len(ids) + 1} tokens, all carry loss; EOS appended between poems)"
    enc = template.encode_example(tokenizer, record["messages"], max_length=block_size)
    if enc is None:
        return "(no answer token fits in block_size: this example would be skipped)"
    ids, labels = enc["input_ids"], enc["labels"]
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            parts.append(text if labels[start] == IGNORE_INDEX else f"[[{_clip(text)}]]")
            start = i
    n_loss = sum(1 for x in labels if x != IGNORE_INDEX)
    full = len(template.encode_example(tokenizer, record["messages"], max_length=10 ** 9)["input_ids"])
    cut = f"; truncated from {full} to block_size {block_size}" if full > len(ids) else ""
    return "".join(parts) + f"\n({len(ids)} tokens, {n_loss} carry loss{cut})"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[:MAX_EXAMPLE_CHARS] + " …"
