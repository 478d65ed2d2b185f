"""Markdown, HTML and CSV table helpers shared by report, sweep and compare.

Every string that reaches HTML passes through ``html.escape`` here: samples are model output and
poems from the web, and a ``<script>`` in a poem must show as text, not run.
"""
from __future__ import annotations

import csv
import html
import io
import math

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}
pre{white-space:pre-wrap;font-family:Georgia,serif;font-size:14px;margin:0}
.samples td{text-align:left;width:25%}.note{color:#777;font-size:12px}img{max-width:100%}.wide{overflow-x:auto}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}"""


def fmt(x, digits: int = 3) -> str:
    """Numbers for people: None -> '—', floats to 3 significant-ish decimals, bools as yes/no."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if 0 < abs(x) < 0.01:
            return f"{x:.3g}"          # learning rates: 0.0001, not 0.000
        return f"{x:.{digits}f}"
    return str(x)


def md_cell(x) -> str:
    return fmt(x).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def html_table(headers: list[str], rows: list[list], cls: str = "", left: int = 1) -> str:
    """Table with the first ``left`` columns left-aligned (labels), the rest right-aligned (numbers)."""
    def cell(tag, x, i):
        c = ' class="l"' if i < left else ""
        return f"<{tag}{c}>{html.escape(fmt(x))}</{tag}>"
    head = "<tr>" + "".join(cell("th", h, i) for i, h in enumerate(headers)) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="wide"><table class="{cls}">{head}{body}</table></div>'


def html_img(b64: str | None, alt: str) -> str:
    if not b64:
        return f'<p class="note">({html.escape(alt)}: no data)</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def html_page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def csv_text(headers: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers)
    for r in rows:
        w.writerow(["" if c is None else c for c in r])
    return buf.getvalue()


def fence(text: str) -> str:
    """A Markdown code fence longer than any backtick run in ``text`` (so a sample cannot break out)."""
    longest = max((len(run) for run in text.split("\n") for run in _backtick_runs(run)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def _backtick_runs(s: str):
    run = 0
    for ch in s + " ":
        if ch == "`":
            run += 1
        else:
            if run:
                yield "`" * run
            run = 0
