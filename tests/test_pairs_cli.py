"""``quill pairs RUN``: n poems per prompt from a tiny run's last model, best vs worst by poetic score, written as
preference records that ``data.kind: preferences`` reads; the eval suite's prompts are never among them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from quill.apps.pairs import PairsError, make_pairs
from quill.cli import main
from quill.config import load_config
from quill.data.clean import text_key
from quill.data.prepare import prepare_stage_data
from quill.evaluate.sampling import Sample
from quill.evaluate.suite import load_suite
from quill.train.pipeline import train

TINY_DPO = Path(__file__).parent / "fixtures" / "train" / "tiny-dpo.yaml"
SUITE_PROMPT = "Write a poem about the sea and the sky"   # in the packaged eval suite
TRAIN_PROMPTS = ["Write a short poem about the moon.", "Write a poem about a river in spring.",
                 "Write a short poem about the moon.", SUITE_PROMPT, "Write a haiku about snow."]
ANSWER = "The moon is bright tonight,\nit fills the sky with light,\nand all the hills are white."
COUPLETS = "Write a poem in rhyming couplets about the moon."


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-stage (sft) run on the tiny Llama whose training prompts include an eval-suite prompt."""
    root = tmp_path_factory.mktemp("pairs")
    data = root / "instructions.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": f"{ANSWER}\n({i})"}]}) + "\n"
                            for i, p in enumerate(TRAIN_PROMPTS * 2)))
    (root / "tiny.yaml").write_text(f"""
name: tiny-pairs
model: {{name: tiny-llama}}
stages:
  - name: sft
    kind: sft
    data: {{source: {data}, kind: instructions, split: {{val: 0.0, seed: 0}}, clean: {{dedupe: false}}}}
    adapter: {{method: lora, r: 4, alpha: 8, dropout: 0.0, targets: all-linear}}
    train: {{micro_batch: 2, grad_accum: 1, max_steps: 1, lr: 1e-2, block_size: 96, precision: fp32, warmup: 0}}
generation: {{max_new_tokens: 12, temperature: 1.0, top_p: 1.0}}
tracking: {{report_to: []}}
""")
    run = root / "run"
    train(load_config(root / "tiny.yaml"), run, base_dir=root)
    return run


def read_back(path: Path):
    """The pairs as a dpo stage reads them (``data.kind: preferences``)."""
    cfg = load_config(TINY_DPO, [f"stages.dpo.data.source={path}", "stages.dpo.data.split.val=0"])
    return prepare_stage_data(cfg.stage("dpo"))


def test_quill_pairs_samples_the_run_and_keeps_the_suite_out(tiny_run, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(tiny_run), "--n", "3", "--out", str(out), "--min-margin", "0"]) == 0
    printed = capsys.readouterr().out
    assert "3 prompts × 3 poems from sft" in printed and "in_eval_suite 2" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    suite = {text_key(p.prompt) for p in load_suite("default").prompts}
    assert SUITE_PROMPT in {p.prompt for p in load_suite("default").prompts}
    prompts = [r["prompt"] for r in records]
    assert len(prompts) == len(set(prompts)) and not suite & {text_key(p) for p in prompts}
    for r in records:
        assert r["margin"] >= 0 and r["chosen_score"] - r["rejected_score"] == pytest.approx(r["margin"], abs=1e-3)
        assert set(r["chosen_terms"]) >= {"no_loop"} and r["chosen"] != r["rejected"]
    if records:  # random weights: every poem can score the same; the fake-sampler test covers the threshold
        data = read_back(out)
        assert data.report["rows_out"] + sum(data.report["dropped"].values()) == len(records)


def fake_sampler(model, tokenizer, template, requests, batch_size, progress, **settings):
    """Sample 0 of the couplets prompt is a rhymed couplet that stopped; every other sample is one plain line."""
    out = []
    for i, req in enumerate(requests):
        good = req.prompt == COUPLETS and i % 3 == 0
        text = "The moon is bright tonight,\nit fills the sky with light." if good else "grey stones lie"
        out.append(Sample(text, finished=good, new_tokens=5))
        progress(1, 5)
    return out


def test_pairs_below_the_margin_are_dropped_and_counted(tiny_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": COUPLETS}) + "\n" + json.dumps({"prompt": [
        {"role": "user", "content": "Write a poem about stones."}]}) + "\n")
    out = tmp_path / "pairs.jsonl"
    stats = make_pairs(tiny_run, prompts=str(prompts), n=3, out=out, min_margin=0.05, sampler=fake_sampler)
    assert stats["pairs"] == 1 and stats["dropped"] == {"identical": 1}
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["prompt"] == COUPLETS and record["margin"] >= 0.05
    assert record["chosen_terms"]["rhyme"] == 1.0 and record["rejected_terms"]["stopped"] == 0.0
    data = read_back(out)
    assert data.splits["train"][0]["chosen"].startswith("The moon") and data.report["dropped"] == {}
    high = make_pairs(tiny_run, prompts=str(prompts), n=3, out=out, min_margin=0.99, sampler=fake_sampler)
    assert high["pairs"] == 0 and high["dropped"] == {"identical": 1, "below_margin": 1}
    assert "margin below 0.99: 1" in capsys.readouterr().out


def test_pairs_errors_are_one_line(tiny_run, tmp_path):
    with pytest.raises(PairsError, match="no such prompts file"):
        make_pairs(tiny_run, prompts=str(tmp_path / "none.txt"))
    with pytest.raises(PairsError, match="at least 2"):
        make_pairs(tiny_run, n=1)
    with pytest.raises(PairsError, match="not a quill run folder"):
        make_pairs(tmp_path)


def form_fake_sampler(model, tokenizer, template, requests, batch_size, progress, **settings):
    """Form-aware requests get a rhymed couplet that stopped, plain ones a line that ran out."""
    out = []
    for req in requests:
        text = "The moon is bright tonight,\nit fills the sky with light." if req.form else "grey stones lie"
        out.append(Sample(text, finished=req.form, new_tokens=5))
        progress(1, 5)
    return out


def test_pairs_with_form_aware_poems_say_which_decode_won(tiny_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{COUPLETS}\n{SUITE_PROMPT}\nWrite two rhyming couplets about the light.\n")
    seen = []

    def sampler(*args, **kwargs):
        seen.extend(args[3])
        return form_fake_sampler(*args, **kwargs)
    stats = make_pairs(tiny_run, prompts=str(prompts), n=3, form=1, out=tmp_path / "p.jsonl", min_margin=0.0,
                       sampler=sampler)
    assert [r.form for r in seen] == [False, False, True] * 2  # the suite prompt is left out, even from a FILE
    assert stats["left_out"] == {"in_eval_suite": 1} and stats["pairs"] == 2 and stats["chosen_form"] == 2
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(r["chosen_decode"] == "form" and r["rejected_decode"] == "plain" for r in records)
    assert "the form-aware poem chosen in 2" in capsys.readouterr().out
    with pytest.raises(PairsError, match="--form must be between 0 and --n"):
        make_pairs(tiny_run, prompts=str(prompts), n=2, form=3, sampler=sampler)


def test_form_prompts_name_their_shape_and_avoid_the_suite():
    from quill.data.form_prompts import PHRASINGS, TOPICS, eval_topics, form_prompts
    from quill.verse.forms import read_prompt
    from quill.verse.score import topic_words
    for phrasing, wanted in PHRASINGS:
        for topic in TOPICS:
            found = read_prompt(phrasing.format(t=topic))
            assert {k: found.get(k) for k in wanted} == wanted, (phrasing, topic, found)
    suite = [p.prompt for p in load_suite("default").prompts]
    prompts = form_prompts(suite, seed=0)
    held = eval_topics(suite)
    assert {"sea", "moon", "winter"} <= held
    assert prompts and not any(set(topic_words(p)) & held for p in prompts)
    assert not {text_key(p) for p in prompts} & {text_key(p) for p in suite}
    assert len(prompts) == len(set(prompts)) and prompts != form_prompts(suite, seed=1)
    assert sorted(prompts) == sorted(form_prompts(suite, seed=1))
