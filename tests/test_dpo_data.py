"""Preference data (``data.kind: preferences``): layouts, bad rows counted by reason, a file with no usable
row, the cross-stage held-out set, and truncation that is counted, never silent."""
import json

import pytest

from quill.config import DataConfig, StageConfig
from quill.data.pairs import encode_pairs
from quill.data.prepare import overlap_keys, prepare_stage_data, prepare_stages
from quill.data.preferences import row_to_preference
from quill.errors import DataError

PROMPT = "Write a poem about the sea."
MSGS = [{"role": "user", "content": PROMPT}]


def stage(source, **data):
    return StageConfig(name="dpo", kind="dpo", data=DataConfig(source=str(source), kind="preferences", **data))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("row", [
    {"prompt": PROMPT, "chosen": "Waves.", "rejected": "Water."},
    {"prompt": MSGS, "chosen": [{"role": "assistant", "content": "Waves."}],
     "rejected": [{"role": "assistant", "content": "Water."}]},
    {"chosen": MSGS + [{"role": "assistant", "content": "Waves."}],          # TRL's implicit prompt
     "rejected": MSGS + [{"role": "assistant", "content": "Water."}]},
    {"prompt": json.dumps(MSGS), "chosen": "Waves.", "rejected": "Water."},  # a message list as a JSON string
])
def test_layouts_give_one_record(row):
    rec, reason = row_to_preference(row)
    assert reason is None
    assert rec == {"prompt": MSGS, "chosen": "Waves.", "rejected": "Water."}


@pytest.mark.parametrize("row,reason", [
    ({"chosen": "a", "rejected": "b"}, "missing_prompt"),
    ({"prompt": PROMPT, "rejected": "b"}, "missing_chosen"),
    ({"prompt": PROMPT, "chosen": "a"}, "missing_rejected"),
    ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "bad_messages"),
    ({"prompt": PROMPT, "chosen": [{"role": "assistant", "content": " "}], "rejected": "b"}, "empty_answer"),
    ({"chosen": MSGS + [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "prompt_mismatch"),
])
def test_bad_rows_have_a_reason(row, reason):
    assert row_to_preference(row) == (None, reason)


def test_prepare_counts_bad_rows_by_reason(tmp_path):
    good = [{"prompt": f"Write about {w}.", "chosen": f"O {w}, my {w}!", "rejected": f"{w} is fine."}
            for w in ("sea", "sky", "moon", "sun", "rain")]
    bad = [{"prompt": PROMPT, "chosen": "Same words", "rejected": "Same words  \n"},  # equal once normalised
           {"prompt": PROMPT, "rejected": "b"},
           {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": ""}], "rejected": "b"}]
    data = prepare_stage_data(stage(write_jsonl(tmp_path / "p.jsonl", good + bad), split={"val": 0.2}))
    rep = data.report
    assert data.kind == "preferences" and rep["records"] == "preferences"
    assert rep["dropped"] == {"same_answers": 1, "missing_chosen": 1, "empty_answer": 1}
    assert rep["rows_in"] == rep["rows_out"] + sum(rep["dropped"].values())
    assert rep["splits"]["val"] >= 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_other_file_formats(tmp_path, fmt):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"prompt": ["A?", "B?", "C?"], "chosen": ["Yes, a.", "Yes, b.", "Yes, c."],
                       "rejected": ["No.", "Nope.", "Never."]})
    path = tmp_path / f"p.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "parquet": lambda: df.to_parquet(path),
     "json": lambda: df.to_json(path, orient="records")}[fmt]()
    data = prepare_stage_data(stage(path, split={"val": 0.0}))
    assert len(data.splits["train"]) == 3


def test_no_usable_row_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": PROMPT, "chosen": "x", "rejected": "x"}] * 2)
    with pytest.raises(DataError, match="broken.jsonl: no usable rows.*same_answers"):
        prepare_stage_data(stage(path))
    path = write_jsonl(tmp_path / "nocol.jsonl", [{"prompt": PROMPT, "answer": "x"}])
    with pytest.raises(DataError, match="nocol.jsonl: no preference column 'chosen'"):
        prepare_stage_data(stage(path))


def test_pairs_of_one_prompt_share_a_split_and_stages_share_held_out_poems(tmp_path):
    rows = [{"prompt": f"Prompt {i % 4}.", "chosen": f"Answer number {i} rises here", "rejected": f"flat {i}"}
            for i in range(16)]
    data = prepare_stage_data(stage(write_jsonl(tmp_path / "p.jsonl", rows), split={"val": 0.25}))
    where = {}
    for split, recs in data.splits.items():
        for r in recs:
            where.setdefault(r["prompt"][0]["content"], set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    # a poem held out by an sft stage is not trained on by the dpo stage
    poem = "The tide comes in across the sand\nand takes the castles we had planned"
    sft_rows = [{"prompt": f"Q{i}", "completion": f"Some other poem number {i} goes here"} for i in range(9)]
    sft_rows.append({"prompt": "Q", "completion": poem})
    sft = StageConfig(name="sft", kind="sft", data=DataConfig(source=str(write_jsonl(tmp_path / "s.jsonl", sft_rows)),
                                                              kind="instructions", split={"val": 0.5, "seed": 3}))
    pref = [{"prompt": f"P{i}", "chosen": poem if i == 0 else f"Chosen poem {i} here now", "rejected": f"r{i}"}
            for i in range(6)]
    out = prepare_stages([sft, stage(write_jsonl(tmp_path / "d.jsonl", pref), split={"val": 0.2})])
    held = {k for name in ("val", "test") for r in out["sft"].splits[name] for k in overlap_keys(r, "instructions")}
    for r in out["dpo"].splits["train"]:
        assert not overlap_keys(r, "preferences") & held


def test_truncation_is_counted_and_cuts_the_prompt_first(tiny_llama):
    _, tok, tpl = tiny_llama
    long_prompt = [{"role": "user", "content": "word " * 60}]
    rec = {"prompt": long_prompt, "chosen": "a short answer", "rejected": "another short one"}
    enc = encode_pairs([rec], tok, tpl, max_length=40, max_prompt=30)
    pair = enc.sequences[0]
    eot = tpl.end_of_turn_id(tok)
    assert enc.truncated == {"truncated_prompt": 1}  # the answers kept their end-of-turn
    assert pair.chosen.labels[-1] == eot and pair.rejected.labels[-1] == eot
    assert len(pair.chosen) <= 40 and len(pair.rejected) <= 40
    p_len = sum(1 for x in pair.chosen.labels if x == -100)
    assert p_len == sum(1 for x in pair.rejected.labels if x == -100) <= 30
    assert pair.chosen.input_ids[:p_len] == pair.rejected.input_ids[:p_len]
    long_answer = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "line " * 80, "rejected": "no"}
    enc = encode_pairs([long_answer], tok, tpl, max_length=32)
    assert enc.truncated == {"truncated_end": 1}
    assert eot not in enc.sequences[0].chosen.labels and enc.sequences[0].rejected.labels[-1] == eot
