"""report.md and a self-contained report.html from an eval.json dict (and the run's metrics.jsonl).

Metric cells are ``mean [lo, hi]``: the mean over samples and its 95% bootstrap interval (eval.json
``intervals``), so two models' rows can be told apart from noise; ``poetic_score`` is the first row.
The report is a pure function of its inputs: ``quill eval`` computes eval.json once, and the
report can be rebuilt from it (``write_report``) without loading any model. The HTML embeds its
figures as base64 PNG and escapes every sample, so it can be mailed or opened from anywhere.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from quill.evaluate.figures import loss_curves, metric_bars
from quill.evaluate.poetry import HEADLINE, METRIC_KEYS
from quill.evaluate.tables import fence, fmt, html_img, html_page, html_table, md_table
from quill.run import RunFolder

SPLITS = ("train", "val", "test")
SAMPLE_NOTE_KEYS = ("poetic_score", "rhymed_lines", "meter_iambic", "distinct_2", "copy_longest")


def perplexity(loss: float | None) -> float | None:
    """exp(loss); inf when it overflows, None when there is no loss."""
    if loss is None or (isinstance(loss, float) and math.isnan(loss)):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def loss_table(data: dict) -> tuple[list[str], list[list]]:
    """Rows = model (base, each stage), columns = stage/split, cells 'loss (ppl)'.

    Each stage's splits are that stage's data (poems for DAPT, instruction pairs for SFT), so reading
    down a column shows how each model does on the same tokens: the reference's before/after table.
    """
    losses = data.get("losses") or {}
    cols = []
    for stage in data.get("stage_order") or []:
        present = {sp for m in losses.values() for sp in (m.get(stage) or {})}
        cols += [(stage, sp) for sp in SPLITS if sp in present]
    if not cols:
        return ["model"], []
    rows = []
    for model in [m for m in (data.get("models") or list(losses)) if m in losses]:  # "+form" rows: same weights
        row: list = [model]
        for stage, sp in cols:
            cell = ((losses.get(model) or {}).get(stage) or {}).get(sp)
            if not cell or cell.get("loss") is None:
                row.append(None)
            else:
                row.append(f"{fmt(cell['loss'])} ({fmt(cell.get('perplexity') or perplexity(cell['loss']), 1)})")
        rows.append(row)
    return ["model"] + [f"{s}/{sp} loss (ppl)" for s, sp in cols], rows


def metric_columns(data: dict) -> list[str]:
    """Model columns for metric tables: the models in order, then the human reference."""
    names = [m for m in (data.get("models") or []) if m in (data.get("metrics") or {})]
    return names + [m for m in (data.get("metrics") or {}) if m not in names]


def _two(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 1000 else fmt(x)


def with_interval(value, ci) -> object:
    """A metric cell: ``0.52 [0.41, 0.63]`` with its interval (when known and not a single point), floats to
    two decimals, anything else (None, counts) as is."""
    if value is None or isinstance(value, bool) or not isinstance(value, float):
        return value
    if not ci or ci[0] == ci[1]:
        return _two(value)
    return f"{_two(value)} [{_two(float(ci[0]))}, {_two(float(ci[1]))}]"


def metrics_table(data: dict) -> tuple[list[str], list[list]]:
    cols = metric_columns(data)
    metrics = data.get("metrics") or {}
    cis = data.get("intervals") or {}
    extra = sorted({k for c in cols for k in metrics[c]} - set(METRIC_KEYS) - {"copy_longest_max", "n"})
    keys = [k for k in METRIC_KEYS + extra + ["copy_longest_max", "n"] if any(k in metrics[c] for c in cols)]
    return ["metric"] + cols, [[k] + [with_interval(metrics[c].get(k), (cis.get(c) or {}).get(k)) for c in cols]
                               for k in keys]


def _samples_by_prompt(data: dict) -> list[tuple[dict, dict[str, list[dict]]]]:
    out = []
    for p in (data.get("suite") or {}).get("prompts") or []:
        per_model = {m: [s for s in (data.get("samples") or {}).get(m, []) if s.get("prompt_id") == p["id"]]
                     for m in data.get("models") or []}
        out.append((p, per_model))
    return out


def _note(sample: dict) -> str:
    m = sample.get("metrics") or {}
    bits = [f"{k}={fmt(m.get(k), 2)}" for k in SAMPLE_NOTE_KEYS if m.get(k) is not None]
    if sample.get("finished") is False:
        bits.insert(0, "no EOS (hit the token limit)")
    return "; ".join(bits)


def render_markdown(data: dict) -> str:
    out = [f"# quill evaluation: {data.get('run', '')}", ""]
    out.append(f"Base model `{data.get('model', '?')}`; suite `{(data.get('suite') or {}).get('name', '?')}` "
               f"(v{(data.get('suite') or {}).get('version', '?')}), {data.get('samples_per_prompt', '?')} "
               f"sample(s) per prompt (seed = {data.get('seeds') or 'fixed'})"
               + (f", best of {data['best_of']} by poetic score" if (data.get("best_of") or 1) > 1 else "")
               + f"; sampling {json.dumps(data.get('sampling') or {})}.")
    out += ["", "## Loss (token-weighted) and perplexity", ""]
    h, r = loss_table(data)
    out += [md_table(h, r) if r else "(no losses)", ""]
    out += ["## Poetry metrics (means over samples [95% bootstrap interval]; human = held-out corpus poems; "
            "`+form` = form-aware decoding)", ""]
    h, r = metrics_table(data)
    out += [md_table(h, r) if r else "(no metrics)", ""]
    if data.get("human"):
        out += [f"Human reference: {data['human'].get('poems', '?')} poems from {data['human'].get('source', '?')}.", ""]
    out += ["## Samples", ""]
    for p, per_model in _samples_by_prompt(data):
        out += [f"### {p['id']} ({p.get('mode', 'chat')})", "", fence(p["prompt"]), ""]
        if p.get("checks"):
            out += [f"checks: `{json.dumps(p['checks'])}`", ""]
        for model, samples in per_model.items():
            for s in samples:
                out += [f"**{model}** (seed {s.get('seed', '?')}) {_note(s)}", "", fence(s.get("text", "")), ""]
    return "\n".join(out) + "\n"


def render_html(data: dict, metric_rows: list[dict] | None = None) -> str:
    esc = html.escape
    body = [f"<h1>quill evaluation: {esc(str(data.get('run', '')))}</h1>",
            f"<p>Base model <code>{esc(str(data.get('model', '?')))}</code>; suite "
            f"<code>{esc(str((data.get('suite') or {}).get('name', '?')))}</code>; "
            f"{esc(str(data.get('samples_per_prompt', '?')))} sample(s) per prompt; sampling "
            f"<code>{esc(json.dumps(data.get('sampling') or {}))}</code>.</p>"]
    body.append("<h2>Loss and perplexity</h2>")
    h, r = loss_table(data)
    body.append(html_table(h, r) if r else '<p class="note">(no losses)</p>')
    body.append("<h2>Loss curves</h2>")
    body.append(html_img(loss_curves(metric_rows or [], data.get("stage_order")), "loss curves"))
    body.append("<h2>Poetry metrics</h2>")
    metrics = data.get("metrics") or {}
    body.append(html_img(metric_bars({m: metrics[m] for m in metric_columns(data)}, HEADLINE),
                         "metric bars"))
    h, r = metrics_table(data)
    body.append(html_table(h, r) if r else '<p class="note">(no metrics)</p>')
    if data.get("human"):
        body.append(f'<p class="note">human = {esc(str(data["human"].get("poems", "?")))} held-out poems from '
                    f'{esc(str(data["human"].get("source", "?")))}</p>')
    body.append("<h2>Samples</h2>")
    models = data.get("models") or []
    rows = []
    for p, per_model in _samples_by_prompt(data):
        head = (f"<td><b>{esc(p['id'])}</b> <span class='note'>({esc(p.get('mode', 'chat'))})</span>"
                f"<pre>{esc(p['prompt'])}</pre><span class='note'>{esc(json.dumps(p.get('checks') or {}))}</span></td>")
        cells = []
        for m in models:
            parts = [f"<pre>{esc(s.get('text', ''))}</pre><div class='note'>{esc(_note(s))}</div>"
                     for s in per_model[m]]
            cells.append("<td>" + "<hr>".join(parts) + "</td>")
        rows.append("<tr>" + head + "".join(cells) + "</tr>")
    header = "<tr><th class='l'>prompt</th>" + "".join(f"<th class='l'>{esc(m)}</th>" for m in models) + "</tr>"
    body.append(f"<table class='samples'>{header}{''.join(rows)}</table>")
    return html_page(f"quill eval {data.get('run', '')}", "\n".join(body))


def write_report(data: dict, out_dir: str | Path, metric_rows: list[dict] | None = None) -> dict[str, Path]:
    """Write report.md and report.html into ``out_dir``; ``metric_rows`` default to the metrics.jsonl rows of
    ``out_dir`` as a run folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if metric_rows is None:
        metric_rows = RunFolder(out).read_metrics()
    paths = {"md": out / "report.md", "html": out / "report.html"}
    paths["md"].write_text(render_markdown(data), encoding="utf-8")
    paths["html"].write_text(render_html(data, metric_rows), encoding="utf-8")
    return paths
