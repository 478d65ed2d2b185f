"""`quill eval` on a hand-built run folder: a tiny random model saved as if each stage had trained it.

No training involved, so these tests pin the eval layer (losses, sampling, scoring, files) on their own;
the end-to-end test with real training lives in test_eval_e2e.py.
"""
import json
import re
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


def copying_sampler(model, tok, tpl, requests, **kw):
    """Fake batched sampler: recites a training poem for one prompt (copy metric must see it), stops every
    other sample (j = seed % 1000: sample j of its prompt)."""
    text = json.loads((FIX / "poems.jsonl").read_text().splitlines()[0])["text"]
    return [Sample(text=text if "sea and the sky" in r.prompt else f"seed {r.seed} sample {r.seed % 1000}",
                   finished=(r.seed % 1000) % 2 == 0, new_tokens=5) for r in requests]


def test_run_eval_writes_files_with_every_metric(tmp_path):
    run = fake_run(tmp_path)
    data = run_eval(run, samples=2, quick=True, sampler=copying_sampler)
    for name in ("eval.json", "report.md", "report.html"):
        assert (run / name).is_file()
    saved = json.loads((run / "eval.json").read_text())
    assert saved["models"] == ["base", "dapt", "sft", "sft+form"]      # the poet also decoded form-aware
    assert set(saved["metrics"]) == {"base", "dapt", "sft", "sft+form", "human"}
    assert set(saved["losses"]) == {"base", "dapt", "sft"}              # +form: the same weights, no losses
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


def test_engine_sampler_reports_stop_flags_and_is_seeded(tiny_llama):
    """Batched engine sampling: one sample per request, at most max_new_tokens, a bool stop flag; the same
    seed gives the same text whatever else shares the batch."""
    from quill.evaluate import sampling
    model, tok, tpl = tiny_llama
    reqs = [sampling.Request("Write a poem", "chat", 7), sampling.Request("Write a poem", "chat", 8),
            sampling.Request("The sea", "raw", 7)]
    a = sampling.sample_requests(model, tok, tpl, reqs, max_new_tokens=3)
    b = sampling.sample_requests(model, tok, tpl, reqs[:1], max_new_tokens=3)
    assert len(a) == 3 and a[0].text == b[0].text
    assert all(s.new_tokens <= 3 and isinstance(s.finished, bool) for s in a)
    done = []
    c = sampling.sample_requests(model, tok, tpl, reqs, batch_size=2, progress=lambda n, t: done.append((n, t)),
                                 max_new_tokens=3)
    # two slots, three requests (continuous batching): progress hears of each poem as it ends, with its tokens
    assert [n for n, _ in done] == [1, 1, 1] and sum(t for _, t in done) == sum(s.new_tokens for s in c)
    assert [s.text for s in c] == [s.text for s in a]


def test_stop_token_sets_finished(tiny_llama):
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

    s = sampling.sample_requests(model, tok, StopAtFirst(), [sampling.Request("The sea", "raw", 0)],
                                 temperature=0.0, repetition_penalty=1.0, max_new_tokens=5)
    assert s[0].finished is True and s[0].new_tokens == 0


# --------------------------------------------------------------------------- seeds, intervals, +form, subsets
def recording_sampler(calls):
    """A fake sampler that records its requests; the poem depends on the seed (so samples differ)."""
    def sampler(model, tok, tpl, requests, **kw):
        calls.append(list(requests))
        out = []
        for r in requests:
            j = r.seed % 1000
            text = "The sea is wide\nthe tide is high" if j % 2 else f"a grey line {r.seed}\nno rhyme here at all"
            out.append(Sample(text=text, finished=j != 2, new_tokens=4))
        return out
    return sampler


def test_three_seeds_per_prompt_with_intervals_and_form_row(tmp_path):
    run = fake_run(tmp_path)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config(eval={})))      # defaults: 3 seeds, plain,form
    calls = []
    data = run_eval(run, quick=True, losses=False, sampler=recording_sampler(calls))
    assert data["samples_per_prompt"] == 3 and data["models"] == ["base", "dapt", "sft", "sft+form"]
    base_seed = data["sampling"]["seed"]
    for name in data["models"]:
        rows = data["samples"][name]
        assert len(rows) == 2 * 3
        for i, pid in enumerate(["ref-raw", "ref-chat"]):
            assert sorted(r["seed"] for r in rows if r["prompt_id"] == pid) == [base_seed + 1000 * i + j
                                                                                 for j in range(3)]
        for key, (lo, hi) in data["intervals"][name].items():
            mean = data["metrics"][name][key]
            assert lo - 1e-9 <= mean <= hi + 1e-9, (name, key)
        assert "poetic_score" in data["intervals"][name]
    assert data["intervals"]["sft"]["stopped"][0] < data["intervals"]["sft"]["stopped"][1]
    # three sampler calls (one per model): the poet's plain and form-aware requests share one, same seeds
    assert len(calls) == 3 and not any(r.form for c in calls[:2] for r in c)
    plain, form = calls[2][:6], calls[2][6:]
    assert len(form) == 6 and not any(r.form for r in plain) and all(r.form for r in form)
    assert [r.seed for r in form] == [r.seed for r in plain] == [r.seed for r in calls[1]]
    saved = json.loads((run / "eval.json").read_text())
    assert saved["intervals"]["sft"]["poetic_score"] == data["intervals"]["sft"]["poetic_score"]
    md = (run / "report.md").read_text()
    assert "| poetic_score |" in md and "sft+form" in md
    assert re.search(r"\| stopped \| [0-9.]+ \[[0-9.]+, [0-9.]+\]", md)


def test_models_subset_and_plain_decode(tmp_path):
    run = fake_run(tmp_path)
    calls = []
    data = run_eval(run, quick=True, losses=False, write=False, models="base,sft", sampler=recording_sampler(calls))
    assert data["models"] == ["base", "sft", "sft+form"]
    data = run_eval(run, quick=True, write=False, models=["dapt"], decode="plain", sampler=recording_sampler(calls))
    assert data["models"] == ["dapt"] and list(data["losses"]) == ["dapt"]
    data = run_eval(run, quick=True, losses=False, write=False, decode="plain", sampler=recording_sampler(calls))
    assert data["models"] == ["base", "dapt", "sft"]
    with pytest.raises(EvalError, match="no model named poet"):
        run_eval(run, quick=True, write=False, models="base,poet", sampler=recording_sampler(calls))
    with pytest.raises(EvalError, match="--decode"):
        run_eval(run, quick=True, write=False, decode="plain,fancy", sampler=recording_sampler(calls))


def test_best_of_keeps_the_best_candidate(tmp_path):
    run = fake_run(tmp_path)

    def sampler(model, tok, tpl, requests, **kw):
        # candidate 1 (seed + 1e6) recites the topic and stops; candidate 0 loops and never stops
        return [Sample(text="the sea the sea the sea the sea" if r.seed < 1_000_000 else "The sky\nabove the sea",
                       finished=r.seed >= 1_000_000, new_tokens=4) for r in requests]

    data = run_eval(run, quick=True, losses=False, write=False, models="sft", decode="plain", best_of=2,
                    sampler=sampler)
    rows = data["samples"]["sft"]
    assert all(r["best_of"]["kept"] == 1 and r["text"].startswith(("The sky", "The sea is blue")) for r in rows)
    m = data["metrics"]["sft"]
    assert m["poetic_score"] > m["poetic_score_single"] and m["loop"] == 0.0
