"""Matplotlib figures for the reports, returned as base64 PNG so report.html is one self-contained file.

The Agg backend is forced before pyplot is imported: reports are written on servers and in tests
with no display, where an interactive backend would fail or pop windows.
"""
from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODEL_COLOURS = {"human": "#555555", "base": "#9ecae1"}
_PALETTE = ["#3182bd", "#e6550d", "#31a354", "#756bb1", "#d6616b", "#8c6d31"]


def to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def model_colour(name: str, i: int) -> str:
    return MODEL_COLOURS.get(name, _PALETTE[i % len(_PALETTE)])


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def loss_curves(metric_rows: list[dict], stage_order: list[str] | None = None) -> str | None:
    """One panel per stage: training loss and validation loss against optimizer step (from metrics.jsonl)."""
    stages = list(stage_order or [])
    for r in metric_rows:
        if r.get("stage") and r["stage"] not in stages:
            stages.append(r["stage"])
    series = {}
    for s in stages:
        train = [(r["step"], r["loss"]) for r in metric_rows if r.get("stage") == s and _finite(r.get("loss"))]
        val = [(r["step"], r["val_loss"]) for r in metric_rows if r.get("stage") == s and _finite(r.get("val_loss"))]
        if train or val:
            series[s] = (sorted(train), sorted(val))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 3.6), squeeze=False)
    for ax, (stage, (train, val)) in zip(axes[0], series.items()):
        if train:
            ax.plot(*zip(*train), label="train loss", color="#3182bd", lw=1.2)
        if val:
            ax.plot(*zip(*val), "o-", label="val loss", color="#e6550d", lw=1.5, ms=4)
        ax.set_title(f"stage: {stage}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return to_base64(fig)


def metric_bars(by_model: dict[str, dict], keys: list[str], title: str = "poetry metrics") -> str | None:
    """Grouped bars: one group per metric, one bar per model (base / stages / human). Metrics are shares."""
    keys = [k for k in keys if any(_finite(m.get(k)) for m in by_model.values())]
    if not keys or not by_model:
        return None
    models = list(by_model)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(keys) * max(1, len(models) / 2.5)), 3.8))
    for i, name in enumerate(models):
        vals = [by_model[name].get(k) for k in keys]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [v if _finite(v) else 0 for v in vals], width, label=name, color=model_colour(name, i),
               edgecolor=["none" if _finite(v) else "#999999" for v in vals])
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share / mean")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")   # outside: never hides a bar
    return to_base64(fig)


def line_chart(xs_by_series: dict[str, list[tuple]], xlabel: str, ylabel: str, title: str) -> str | None:
    """Multi-series line chart, points in the given order; a (x, nan) point breaks a line (stage boundaries)."""
    if not any(xs_by_series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (name, pts) in enumerate(xs_by_series.items()):
        if pts:
            ax.plot(*zip(*pts), "o-", label=name, color=model_colour(name, i), ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return to_base64(fig)
