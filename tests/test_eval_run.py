"""`quill eval` on a hand-built run folder: a tiny random model saved as if each stage had trained it.

No training involved, so these tests pin the eval layer (losses, sampling, scoring, files) on their own;
the end-to-end test with real training lives in test_eval_e2e.py.
"""
import json
from pathlib import Path

import pytest
import yaml

from quill.evaluate.poetry import METRIC_KEYS
from quill.evaluate.run import EvalError, run_eval
from quill.evaluate.sampling import Sample

FIX = Path(__file__).parent / "fixtures" / "eval"


def tiny_config(**extra) -> dict:
    cfg = {"name": "tiny", "model": {"name": "tiny-llama"}, "tracking": {"report_to": []},
           "generation": {"max_new_tokens": 6},
           "eval": {"samples_per_prompt": 1},
           "stages": [{"name": "dapt", "kind": "dapt", "data": {"source": str(FIX / "poems.jsonl")},
                       "train": {"block_size": 64, "micro_batch": 2, "max_steps": 2}},
                      {"name": "sft", "kind": "sft", "data": {"source": str(FIX / "pairs.jsonl"),
                                                              "kind": "instructions"},
                       "train": {"block_size": 128, "micro_batch": 2, "max_steps": 2}}]}
    cfg.update(extra)
    return cfg


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(tmp: Path, with_models: bool = True) -> Path:
    """config.yaml + data/<stage>/splits (+ the tiny base saved as each stage's model)."""
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    for stage, src in (("dapt", "poems.jsonl"), ("sft", "pairs.jsonl")):
        rows = [json.loads(x) for x in (FIX / src).read_text().splitlines()]
        _jsonl(run / "data" / stage / "train.jsonl", rows[:8])
        _jsonl(run / "data" / stage / "val.jsonl", rows[8:10])
        _jsonl(run / "data" / stage / "test.jsonl", rows[10:])
    if with_models:
        from quill.config import ModelConfig
        from quill.models import load_base, save_model
        model, tok, tpl = load_base(ModelConfig(name="tiny-llama"))
        for stage in ("dapt", "sft"):
            save_model(run / stage / "model", model, tok, tpl, None)
    _jsonl(run / "metrics.jsonl", [{"stage": "dapt", "step": 1, "loss": 10.9}, {"stage": "dapt", "step": 2,
                                                                                 "loss": 10.5, "val_loss": None},
                                   {"stage": "dapt", "step": 2, "val_loss": 10.7}])
    return run


def copying_sampler(model, tok, tpl, prompt, mode, n, seed, **kw):
    """Fake sampler: recites a training poem for one prompt (copy metric must see it), stops every other time."""
    text = json.loads((FIX / "poems.jsonl").read_text().splitlines()[0])["text"]
    return [Sample(text=text if "sea and the sky" in prompt else f"seed {seed} sample {i}", finished=bool(i % 2 == 0),
                   new_tokens=5) for i in range(n)]


def test_run_eval_writes_files_with_every_metric(tmp_path):
    run = fake_run(tmp_path)
    data = run_eval(run, samples=2, quick=True, sampler=copying_sampler)
    for name in ("eval.json", "report.md", "report.html"):
        assert (run / name).is_file()
    saved = json.loads((run / "eval.json").read_text())
    assert saved["models"] == ["base", "dapt", "sft"]
    assert set(saved["metrics"]) == {"base", "dapt", "sft", "human"}
    for m in ("base", "dapt", "sft"):
        assert set(METRIC_KEYS) <= set(saved["metrics"][m])
        assert saved["metrics"][m]["stopped"] == 0.5 and saved["metrics"][m]["copied"] == 0.5
        # losses: every stage's three splits, token-weighted, perplexity = exp(loss)
        for stage in ("dapt", "sft"):
            for split in ("train", "val", "test"):
                cell = saved["losses"][m][stage][split]
                assert cell["tokens"] > 0 and cell["perplexity"] == pytest.approx(2.718281828 ** cell["loss"], rel=1e-6)
    # the same weights everywhere -> the same losses
    assert saved["losses"]["base"]["dapt"]["val"]["loss"] == pytest.approx(saved["losses"]["sft"]["dapt"]["val"]["loss"])
    assert saved["human"]["source"] == "data/dapt/val.jsonl" and saved["human"]["poems"] == 2
    assert len(saved["samples"]["sft"]) == 2 * 2
    assert data["suite"]["name"] == "suite_v1-quick"
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_run_eval_real_sampler_base_only(tmp_path):
    run = fake_run(tmp_path, with_models=False)
    data = run_eval(run, quick=True, max_new_tokens=3, losses=False, write=False)
    assert data["models"] == ["base"] and data["losses"] == {}
    rows = data["samples"]["base"]
    assert len(rows) == 2 and all(r["new_tokens"] <= 3 for r in rows)
    raw = next(r for r in rows if r["prompt_id"] == "ref-raw")
    assert raw["text"].startswith("The sea is blue, the sky is red")    # raw prompts are scored with their prompt
    assert all(isinstance(r["finished"], bool) for r in rows)


def test_run_eval_rejects_non_run(tmp_path):
    with pytest.raises(EvalError, match="not a quill run folder"):
        run_eval(tmp_path)


def test_engine_and_fallback_samplers_report_stop_flags(tiny_llama, monkeypatch):
    """Both sampling paths: n samples, at most max_new_tokens, a bool stop flag; same seed -> same text."""
    from quill.evaluate import sampling
    model, tok, tpl = tiny_llama
    a = sampling.sample_prompt(model, tok, tpl, "Write a poem", "chat", 2, 7, max_new_tokens=3)
    b = sampling.sample_prompt(model, tok, tpl, "Write a poem", "chat", 2, 7, max_new_tokens=3)
    assert [s.text for s in a] == [s.text for s in b] and len(a) == 2
    assert all(s.new_tokens <= 3 and isinstance(s.finished, bool) for s in a)
    monkeypatch.setattr(sampling, "_engine", lambda *a: None)
    c = sampling.sample_prompt(model, tok, tpl, "The sea", "raw", 1, 7, max_new_tokens=3)
    assert len(c) == 1 and c[0].new_tokens <= 3 and isinstance(c[0].finished, bool)
    sampling.release_engine()


def test_stop_token_sets_finished(tiny_llama, monkeypatch):
    """A model that emits a stop token at once must be recorded as finished (the stopping metric)."""
    import torch

    from quill.evaluate import sampling
    model, tok, tpl = tiny_llama
    ids = sampling.prompt_ids(tok, tpl, "The sea", "raw")
    with torch.no_grad():
        first = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())

    class StopAtFirst:
        """The real template, but the greedy first token counts as end-of-turn."""
        def __getattr__(self, name):
            return getattr(tpl, name)

        def stop_token_ids(self, tokenizer):
            return [first]

    for engine in (True, False):
        if not engine:
            monkeypatch.setattr(sampling, "_engine", lambda *a: None)
        s = sampling.sample_prompt(model, tok, StopAtFirst(), "The sea", "raw", 1, 0, temperature=0.0,
                                   repetition_penalty=1.0, max_new_tokens=5)
        assert s[0].finished is True and s[0].new_tokens == 0, engine
    sampling.release_engine()
