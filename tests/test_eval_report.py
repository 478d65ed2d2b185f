"""report.md / report.html from a faked eval.json: tables, embedded figures, escaped samples."""
import base64
import json
import math
import re

from quill.evaluate.poetry import aggregate, score_poem
from quill.evaluate.report import loss_table, perplexity, render_markdown, write_report
from quill.evaluate.suite import load_suite
from quill.evaluate.tables import csv_text, fence, md_table
from quill.run import RunFolder

POEMS = {
    "base": "the sea the sea the sea the sea",
    "dapt": "The sea is blue, the sky is red,\nThe sun is sinking into bed.",
    "sft": "I saw the light\nupon the sea\nthat burned all night\nand called to me <script>alert(1)</script>",
}


def fake_eval(models=("base", "dapt", "sft")) -> dict:
    suite = load_suite().quick()
    samples, metrics = {}, {}
    for m in models:
        rows = []
        for p in suite.prompts:
            for seed in (0, 1):
                text = POEMS[m]
                met = score_poem(text, p.checks, finished=(m != "base"))
                rows.append({"prompt_id": p.id, "seed": seed, "text": text, "finished": m != "base", "metrics": met})
        samples[m] = rows
        metrics[m] = aggregate([r["metrics"] for r in rows])
    metrics["human"] = aggregate([score_poem(t) for t in POEMS.values()])
    losses = {m: {st: {sp: {"loss": 3.0 - i * 0.5 - j * 0.1, "perplexity": math.exp(3.0 - i * 0.5 - j * 0.1),
                             "tokens": 100} for sp in ("train", "val", "test")}
                  for j, st in enumerate(["dapt", "sft"])} for i, m in enumerate(models)}
    return {"run": "runs/fake", "model": "tiny-llama", "suite": {"name": suite.name, "version": suite.version,
            "prompts": [p.to_dict() for p in suite.prompts]}, "sampling": {"temperature": 0.7, "top_p": 0.95},
            "samples_per_prompt": 2, "models": list(models), "stage_order": ["dapt", "sft"], "losses": losses,
            "metrics": metrics, "samples": samples, "human": {"source": "data/dapt/val.jsonl", "poems": 3}}


METRIC_ROWS = ([{"stage": "dapt", "step": s, "loss": 3 - s * 0.1, "lr": 1e-4} for s in range(1, 11)]
               + [{"stage": "dapt", "step": s, "val_loss": 3.1 - s * 0.08} for s in (5, 10)]
               + [{"stage": "sft", "step": s, "loss": 2 - s * 0.05} for s in range(1, 11)]
               + [{"stage": "sft", "step": 10, "val_loss": 1.7}])


def test_loss_table_rows_are_models_columns_stage_split():
    headers, rows = loss_table(fake_eval())
    assert headers[0] == "model" and headers[1] == "dapt/train loss (ppl)" and len(headers) == 7
    assert [r[0] for r in rows] == ["base", "dapt", "sft"]
    assert rows[0][1] == "3.000 (20.1)"
    assert perplexity(1000.0) == float("inf") and perplexity(None) is None


def test_write_report_md_and_self_contained_html(tmp_path):
    data = fake_eval()
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in METRIC_ROWS) + "\n{broken")
    paths = write_report(data, tmp_path)
    md = paths["md"].read_text()
    page = paths["html"].read_text()
    assert "## Loss (token-weighted) and perplexity" in md and "| sft |" in md and "human" in md
    assert "rhymed_lines" in md and "no EOS" in md
    # two figures (loss curves, metric bars), both decodable PNGs embedded in the page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 2
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in imgs)
    # samples are escaped: the poem's <script> is text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http" not in page.replace("http-equiv", "")           # nothing fetched from elsewhere


def test_report_without_losses_or_curves_still_renders(tmp_path):
    data = fake_eval(models=("base",))
    data["losses"] = {}
    paths = write_report(data, tmp_path, metric_rows=[])
    assert "(no losses)" in paths["md"].read_text()
    assert "loss curves: no data" in paths["html"].read_text()


def test_markdown_fence_survives_backticks_and_tables_escape_pipes():
    assert fence("a ``` b").startswith("````")
    assert "a \\| b" in md_table(["x"], [["a | b"]])
    assert csv_text(["a", "b"], [[1, None]]) == "a,b\r\n1,\r\n"
    assert render_markdown({}).startswith("# quill evaluation")


def test_read_metrics_skips_broken_lines(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.metrics.write_text('{"stage": "a", "step": 1, "loss": 2}\nnot json\n')
    assert run.read_metrics() == [{"stage": "a", "step": 1, "loss": 2}]
    assert RunFolder(tmp_path / "missing").read_metrics() == []
