"""A stage's data report as readable text, with a token-length histogram.

Why a histogram: the one number that decides block_size and truncation is the length distribution;
a mean hides the long tail that gets cut off. Buckets are powers of two (log-ish), so poems of 30 and
3,000 tokens both show up, with p50/p90/p99/max beside them.
"""
from __future__ import annotations

import math

BAR_WIDTH = 40


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def length_stats(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {"n": 0}
    return {"n": len(lengths), "p50": percentile(lengths, 50), "p90": percentile(lengths, 90),
            "p99": percentile(lengths, 99), "max": max(lengths)}


def histogram(lengths: list[int], width: int = BAR_WIDTH) -> list[str]:
    """ASCII bars, one per power-of-two bucket from the shortest to the longest length."""
    if not lengths:
        return ["  (no rows)"]
    lo = max(0, int(math.log2(max(1, min(lengths)))))
    hi = int(math.log2(max(1, max(lengths))))
    counts = [0] * (hi - lo + 1)
    for n in lengths:
        counts[int(math.log2(max(1, n))) - lo] += 1
    top = max(counts)
    lines = []
    for i, count in enumerate(counts):
        start, end = 2 ** (lo + i), 2 ** (lo + i + 1) - 1
        if lo + i == 0:
            start = 0
        bar = "#" * max(1 if count else 0, round(width * count / top))
        lines.append(f"  {start:>6}-{end:<6} | {bar:<{width}} {count}")
    return lines


def format_report(report: dict, token_lengths: dict[str, list[int]] | None = None,
                  block_size: int | None = None) -> str:
    """The report dict from ``prepare_stage_data`` (plus optional token lengths per split) as text."""
    out = [f"source:   {report.get('source', '?')}",
           f"kind:     {report.get('kind', '?')}",
           f"rows in:  {report.get('rows_in', 0):,}"]
    dropped = report.get("dropped") or {}
    if dropped:
        out.append(f"dropped:  {sum(dropped.values()):,} (" +
                   ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])) + ")")
    else:
        out.append("dropped:  0")
    if "poems_out" in report:
        poem_splits = report.get("poem_splits", {})
        out.append(f"poems:    {report['poems_out']:,} (" + ", ".join(f"{k} {v:,}" for k, v in poem_splits.items()
                                                                   if v) + ")")
        kinds = report.get("pairs_by_kind", {})
        out.append("pairs:    " + ", ".join(f"{k} {v:,}" for k, v in kinds.items()))
        mix = report.get("mix") or {}
        for key, label in (("form", "forms"), ("scheme", "schemes"), ("meter", "meters"), ("named", "named")):
            if mix.get(key):
                out.append(f"{label + ':':<9} " + ", ".join(f"{k} {v:,}" for k, v in mix[key].items()))
        truth = report.get("truth") or {}
        if truth:
            out.append("truth:    " + ", ".join(f"{k} {t['rate']:.2f} of {t['named']:,}" for k, t in truth.items())
                       + "  (share of pairs whose answer has what the prompt names)")
    moved = report.get("held_out_across_stages") or {}
    if moved:
        out.append("held out: " + ", ".join(f"{k} {v:,}" for k, v in moved.items())
                   + " (train rows held out by another stage of the run, moved out of train)")
    out.append(f"rows out: {report.get('rows_out', 0):,}")
    splits = report.get("splits") or {}
    out.append("splits:   " + " | ".join(f"{k} {v:,}" for k, v in splits.items()))
    if report.get("special_tokens_removed"):
        out.append(f"special tokens removed from the text: {report['special_tokens_removed']:,}")
    for name, lengths in (token_lengths or {}).items():
        if not lengths:
            continue
        stats = length_stats(lengths)
        line = (f"token lengths ({name}, {stats['n']:,} rows): p50 {stats['p50']:,}  p90 {stats['p90']:,}  "
                f"p99 {stats['p99']:,}  max {stats['max']:,}")
        if block_size:
            longer = sum(1 for n in lengths if n > block_size)
            line += f"  | {longer:,} longer than block_size {block_size}"
        out.append(line)
        out.extend(histogram(lengths))
    return "\n".join(out)
