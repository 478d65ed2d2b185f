"""``quill compare RUN…``: several runs side by side — one table (Markdown, CSV) and one HTML page.

Everything comes from files the runs already hold (summary.json, config.yaml, eval.json when
``quill eval`` ran), so comparing a GPT-2 run with a SmolLM2 run loads no model. The same row
builder serves ``quill sweep``.
"""
from __future__ import annotations

from pathlib import Path

from quill.errors import QuillError
from quill.evaluate.figures import line_chart, metric_bars
from quill.evaluate.poetry import HEADLINE
from quill.evaluate.tables import csv_text, html_img, html_page, html_table, md_table
from quill.run import RunFolder

KEY_METRICS = ["poetic_score", "rhymed_lines", "meter_iambic", "distinct_2", "repeated_lines", "stopped", "copied",
               "form_ok"]
STAGE_FIELDS = [("train_loss", "train loss"), ("val_loss_after", "val loss"), ("test_loss", "test loss")]


def final_model(eval_data: dict) -> str | None:
    """The last model evaluated with plain decoding (the final stage, else base): the one a run is judged by
    ("<model>+form" rows, form-aware decoding of the same weights, are reported beside it)."""
    models = [m for m in eval_data.get("models") or [] if "+" not in m]
    return models[-1] if models else None


def run_row(run: RunFolder | Path) -> dict:
    """One flat dict for a run: model, per-stage hyper-parameters and losses, speed, final-model metrics."""
    run = RunFolder(run)
    summary = run.summary()
    cfg = run.raw_config()
    ev = run.read_eval()
    row: dict = {"run": run.path.name, "model": summary.get("model") or (cfg.get("model") or {}).get("name")}
    stage_cfgs = {s.get("name"): s for s in cfg.get("stages") or []}
    wall = speed_tok = speed_s = 0.0
    for stage in run.stage_order():
        tc = (stage_cfgs.get(stage) or {}).get("train") or {}
        st = (summary.get("stages") or {}).get(stage) or {}
        row[f"{stage} batch"] = tc.get("micro_batch")
        row[f"{stage} grad_accum"] = tc.get("grad_accum")
        row[f"{stage} epochs"] = tc.get("max_steps") and f"{tc['max_steps']} steps" or tc.get("epochs")
        row[f"{stage} lr"] = tc.get("lr")
        for key, label in STAGE_FIELDS:
            row[f"{stage} {label}"] = st.get(key)
        wall += st.get("wall_s") or 0.0
        speed_tok += st.get("tokens") or 0
        speed_s += st.get("wall_s") or 0.0
    row["wall_s"] = round(wall, 1) if wall else None
    row["tokens_per_s"] = round(speed_tok / speed_s, 1) if speed_s else None
    final = final_model(ev)
    metrics = (ev.get("metrics") or {}).get(final) or {}
    row["evaluated"] = final
    for k in KEY_METRICS:
        row[k] = metrics.get(k)
    form = ((ev.get("metrics") or {}).get(f"{final}+form") or {}).get("poetic_score")
    if form is not None:
        row["poetic_score +form"] = form
    return row


def table_of(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Union of the rows' keys in first-seen order (runs with different stage names still line up)."""
    headers: list[str] = []
    for r in rows:
        headers += [k for k in r if k not in headers]
    return headers, [[r.get(h) for h in headers] for r in rows]


def _val_curves(runs: list[RunFolder]) -> dict[str, list[tuple]]:
    """Validation loss against a global step (stages laid end to end) per run.

    Each stage measures its own val split (poems, then instructions), so the line is broken at stage
    boundaries (a NaN point) instead of joining two different quantities.
    """
    out = {}
    for run in runs:
        pts, offset, last_stage, last_step = [], 0, None, 0
        for r in run.read_metrics():
            if r.get("stage") != last_stage:
                offset += last_step
                if last_stage is not None:
                    pts.append((offset, float("nan")))
                last_stage, last_step = r.get("stage"), 0
            last_step = max(last_step, r.get("step") or 0)
            if isinstance(r.get("val_loss"), (int, float)):
                pts.append((offset + r["step"], r["val_loss"]))
        out[run.path.name] = pts
    return out


def run_compare(runs: list[str | Path], out: str | Path = "compare") -> dict[str, Path]:
    """Write compare.md, compare.csv and compare.html for the given run folders into ``out``."""
    folders = [RunFolder(r) for r in runs]
    missing = [str(p.path) for p in folders if not p.summary_path.is_file() and not p.eval_path.is_file()]
    if missing:
        raise QuillError(f"not finished quill runs (no summary.json or eval.json): {', '.join(missing)}")
    rows = [run_row(p) for p in folders]
    names = [r["run"] for r in rows]
    if len(set(names)) != len(names):           # two runs called "demo" in different folders
        for r, p in zip(rows, folders):
            r["run"] = str(p.path)
    headers, table = table_of(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "compare.md", "csv": out / "compare.csv", "html": out / "compare.html"}
    files["md"].write_text(f"# quill compare\n\n{md_table(headers, table)}\n\nMetrics are those of each run's "
                           "final model from its eval.json (— where `quill eval` has not run).\n", encoding="utf-8")
    files["csv"].write_text(csv_text(headers, table), encoding="utf-8")
    bars: dict[str, dict] = {}
    for r, p in zip(rows, folders):
        ev = p.read_eval()
        m = (ev.get("metrics") or {}).get(final_model(ev))
        if m:
            bars[r["run"]] = m
        if "human" not in bars and (ev.get("metrics") or {}).get("human"):
            bars["human"] = ev["metrics"]["human"]
    if "human" in bars:
        bars["human"] = bars.pop("human")       # human last, as in the eval report
    body = ["<h1>quill compare</h1>", html_table(headers, table, left=2),
            "<h2>Validation loss</h2>",
            html_img(line_chart(_val_curves(folders), "step (stages end to end)", "val loss",
                                "validation loss (each stage on its own val split)"),
                     "validation loss"),
            "<h2>Poetry metrics (final model of each run)</h2>", html_img(metric_bars(bars, HEADLINE), "metric bars")]
    files["html"].write_text(html_page("quill compare", "\n".join(body)), encoding="utf-8")
    print(f"wrote {files['md']}, {files['csv']}, {files['html']}")
    return files
