"""prepare_stage_data end to end per data kind, save/load, the report, and `quill data inspect`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quill.config import StageConfig
from quill.data.clean import instruction_key, text_key
from quill.data.prepare import load_prepared, prepare_stage_data, save_prepared
from quill.data.report import format_report, histogram, length_stats
from quill.data.split import overlap
from quill.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "data"


def stage(stage_kind="dapt", **data) -> StageConfig:
    return StageConfig.model_validate({"name": "s", "kind": stage_kind, "data": data})


def test_poems_report_accounts_for_every_row():
    prepared = prepare_stage_data(stage(source="pf_messy.csv"), FIX)
    r = prepared.report
    assert prepared.kind == "poems" and r["kind"] == "poems"
    assert r["rows_in"] == 6 and r["dropped"] == {"duplicate": 1, "empty_text": 1} and r["rows_out"] == 4
    assert r["rows_in"] == r["rows_out"] + sum(r["dropped"].values())
    assert r["splits"] == {"train": 3, "val": 1, "test": 0} and set(prepared.splits) == {"train", "val", "test"}
    assert overlap(prepared.splits, lambda x: text_key(x["text"])) == 0


def test_instructions_kind():
    prepared = prepare_stage_data(stage("sft", source="instructions.jsonl", kind="instructions",
                                        split={"val": 0.25, "test": 0.25}), FIX)
    r = prepared.report
    assert prepared.kind == "instructions"
    assert r["dropped"] == {"no_assistant": 1, "empty_prompt": 1, "empty_answer": 1, "no_roles": 1, "duplicate": 1}
    assert r["rows_out"] == 3 and r["rows_in"] == 8
    assert overlap(prepared.splits, instruction_key) == 0
    for rows in prepared.splits.values():
        for rec in rows:
            assert rec["messages"][-1]["role"] == "assistant"


def test_instruction_pairs_for_one_poem_share_a_split(tmp_path):
    """Deduplicated by prompt + answer, but grouped by the poem: two prompts for one poem, one split."""
    poem = "line one of poem {i}\nline two of poem {i}"
    rows = []
    for i in range(30):
        for ask in ("in the style of X", "about love"):
            rows.append({"conversation": f"User: Write a poem {ask}.\nAssistant: Sure, here's a poem {ask}:\n"
                                         + poem.format(i=i)})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    prepared = prepare_stage_data(stage("sft", source=str(tmp_path / "pairs.jsonl"), kind="instructions",
                                        split={"val": 0.2, "test": 0.2}), None)
    assert prepared.report["rows_out"] == 60 and prepared.report["splits"] == {"train": 36, "val": 12, "test": 12}
    owners = {}
    for name, recs in prepared.splits.items():
        for rec in recs:
            owners.setdefault(rec["messages"][-1]["content"].split("\n", 1)[1], set()).add(name)
    assert all(len(v) == 1 for v in owners.values())


def test_synthesize_splits_poems_before_making_pairs():
    prepared = prepare_stage_data(stage("sft", source="poems.jsonl", kind="synthesize", split={"val": 0.3},
                                        synthesize={"per_poem": 3}), FIX)
    r = prepared.report
    assert prepared.kind == "instructions" and r["kind"] == "synthesize"
    assert r["rows_in"] == r["poems_out"] + sum(r["dropped"].values())
    assert r["rows_out"] == sum(r["pairs_by_kind"].values()) == sum(len(v) for v in prepared.splits.values())
    answers = {name: {rec.get("title") for rec in rows} for name, rows in prepared.splits.items()}
    assert not answers["train"] & answers["val"]  # a poem's pairs all live in one split
    assert r["special_tokens_removed"] == 4


def test_synthesize_selects_poems_before_the_split_and_counts_the_rest():
    """min_topic_uses / max_poems act on the poems before they are split; each poem left out is counted."""
    full = prepare_stage_data(stage("sft", source="poems.jsonl", kind="synthesize", split={"val": 0.3}), FIX)
    chosen = prepare_stage_data(stage("sft", source="poems.jsonl", kind="synthesize", split={"val": 0.3},
                                      synthesize={"min_topic_uses": 2, "max_poems": 1}), FIX)
    r = chosen.report  # the fixture: the wind poem and the frog pond come back to their topic, 5 others do not (a duplicate among them)
    assert full.report["poems_out"] == 6 and r["poems_out"] == 1
    assert r["dropped"]["topic_used_too_rarely"] == 5 and r["dropped"]["over_max_poems"] == 1
    assert r["rows_in"] == r["poems_out"] + sum(r["dropped"].values())


def test_no_usable_rows_is_an_error(tmp_path):
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(DataError, match="no usable rows.*empty_text 1"):
        prepare_stage_data(stage(source=str(tmp_path / "blank.jsonl")), None)


def test_save_and_load_round_trip(tmp_path):
    prepared = prepare_stage_data(stage("sft", source="messages.jsonl", kind="instructions"), FIX)
    save_prepared(prepared, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["report.json", "test.jsonl", "train.jsonl",
                                                                      "val.jsonl"]
    loaded = load_prepared(tmp_path / "data")
    assert loaded.kind == prepared.kind and loaded.splits == prepared.splits
    assert loaded.report["rows_out"] == prepared.report["rows_out"]
    with pytest.raises(DataError, match="report.json: missing"):
        load_prepared(tmp_path)


def test_text_folder_skips_counted_in_report():
    r = prepare_stage_data(stage(source="txt"), FIX).report
    assert r["dropped"] == {"empty_file": 1} and r["rows_in"] == 7 and r["rows_out"] == 6


def test_format_report_histogram_and_percentiles():
    prepared = prepare_stage_data(stage(source="pf_messy.csv"), FIX)
    lengths = {"train": [3, 40, 41, 100, 1000], "val": []}
    text = format_report(prepared.report, lengths, block_size=64)
    assert "dropped:  2 (duplicate 1, empty_text 1)" in text
    assert "p50 41" in text and "max 1,000" in text and "2 longer than block_size 64" in text
    assert length_stats([5]) == {"n": 1, "p50": 5, "p90": 5, "p99": 5, "max": 5}
    bars = histogram([1, 2, 3, 4, 100])
    assert bars[0].split("|")[0].strip() == "0-1" and bars[-1].rstrip().endswith("1")
    assert len(bars) == 7  # 0-1, 2-3, 4-7, ..., 64-127


def test_inspect_prints_report_and_marked_examples(tmp_path, capsys):
    from quill.data.inspection import run_inspect
    from quill.models import load_tokenizer
    config = tmp_path / "c.yaml"
    config.write_text(f"""
model: {{name: tiny-gpt2}}
stages:
  - {{name: dapt, kind: dapt, data: {{source: {FIX / 'pf_messy.csv'}}}}}
  - name: sft
    kind: sft
    data: {{source: {FIX / 'instructions.jsonl'}, kind: instructions}}
""")
    loader = lambda m: load_tokenizer(m.name)  # noqa: E731  (what the CLI passes)
    assert run_inspect(config, [], examples=1, load_tokenizer=loader) == 0
    out = capsys.readouterr().out
    assert "=== stage dapt" in out and "=== stage sft" in out and "token lengths (train" in out
    assert "[[<|endoftext|>]]" in out  # DAPT: EOS appended, carries loss
    # only the answer (and its end-of-turn) is marked; the prompt is plain
    assert re.search(r"\nUser: [^\[]+\nAssistant: \[\[[^\[]+<\|endoftext\|>\]\]\n\(\d+ tokens, \d+ carry loss\)", out)
    assert run_inspect(config, [], as_json=True, stage="sft", load_tokenizer=loader) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"sft"} and data["sft"]["rows_in"] == 8 and data["sft"]["token_lengths"]["train"]["n"] > 0


def _poem_lines_of(rec) -> list[str]:
    if "text" in rec:
        return rec["text"].split("\n")
    user, answer = rec["messages"][0]["content"], rec["messages"][-1]["content"]
    return answer.split("\n") + user.split("\n")[1:]


def assert_one_held_out_set(prepared: dict) -> None:
    """No line of any stage's train row is a line of another stage's val/test row."""
    for name, prep in prepared.items():
        train = {text_key(x) for r in prep.splits["train"] for x in _poem_lines_of(r) if text_key(x)}
        for other_name, other in prepared.items():
            if other_name != name:
                held = {text_key(x) for s in ("val", "test") for r in other.splits[s] for x in _poem_lines_of(r)}
                assert not train & held, (name, other_name, sorted(train & held)[:3])


def test_stages_reading_one_folder_share_one_held_out_set(tmp_path):
    from quill.data.prepare import prepare_stages
    folder = tmp_path / "poems"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i:02d}.txt").write_text(f"poem {i} begins with the sea\nand poem {i} ends with the sky\n"
                                              f"the moon of poem {i} is bright\nthe stars of poem {i} at night\n")
    stages = [stage("dapt", source=str(folder), split={"val": 0.2, "seed": 0}),
              StageConfig.model_validate({"name": "s2", "kind": "sft", "data": {
                  "source": str(folder), "kind": "synthesize", "split": {"val": 0.1, "test": 0.1, "seed": 1},
                  "synthesize": {"per_poem": 2}}})]
    separately = {"s": prepare_stage_data(stages[0]), "s2": prepare_stage_data(stages[1])}
    with pytest.raises(AssertionError):
        assert_one_held_out_set(separately)  # today's bug: each stage alone trains on the other's val poems
    prepared = prepare_stages(stages)
    assert_one_held_out_set(prepared)
    r1, r2 = prepared["s"].report, prepared["s2"].report
    moved = sum(r1.get("held_out_across_stages", {}).values()) + sum(r2.get("held_out_across_stages", {}).values())
    assert moved > 0
    assert r1["rows_in"] == r1["rows_out"] + sum(r1["dropped"].values())
    assert r2["rows_in"] == r2["poems_out"] + sum(r2["dropped"].values())
    # stage 1 has no test split: what stage 2 holds out for test goes to stage 1's val
    assert r1["splits"]["test"] == 0 and r1["splits"]["val"] > 8
    assert "held out:" in format_report(r2) and "truth:" in format_report(r2)
    assert all(t["rate"] == 1.0 for t in r2["truth"].values()) and r2["truth"]["lines"]["named"] > 0
    # a stage prepared alone against stages already prepared (resume): its train avoids their eval poems
    late = prepare_stage_data(stages[1], others=[prepared["s"]])
    assert_one_held_out_set({"s": prepared["s"], "s2": late})
    # extra keys (features) survive save/load; training reads only the messages
    save_prepared(prepared["s2"], tmp_path / "data")
    rec = load_prepared(tmp_path / "data").splits["train"][0]
    assert rec["features"]["kind"] and set(rec["messages"][0]) == {"role", "content"}
