"""The hub code path without network: ``datasets.load_dataset`` is replaced by a local DatasetDict."""
from __future__ import annotations

import datasets
import pytest

from quill.config import DataConfig, StageConfig
from quill.data import hub
from quill.data.prepare import prepare_stage_data
from quill.data.sources import read_source
from quill.errors import DataError


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve local DatasetDicts by hub id and record the calls."""
    served: dict[str, datasets.DatasetDict] = {}
    calls: list[tuple] = []

    def load_dataset(hub_id, name=None, split=None, **kw):
        calls.append((hub_id, name, split))
        data = served[hub_id]
        return data[split] if split else data

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_TIMEOUT_S: True)
    return served, calls


def conversations(n, tag):
    return {"conversation": [f"User: {tag} poem {i}?\nAssistant: Here is {tag} poem {i}:\nline\nline {i}"
                             for i in range(n)]}


def test_instruction_preset_keeps_splits_and_maps_validation(fake_hub):
    served, calls = fake_hub
    served["isaacrehg/poetry-instructions"] = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(conversations(20, "train")),
        "validation": datasets.Dataset.from_dict(conversations(3, "val")),
        "test": datasets.Dataset.from_dict(conversations(4, "test"))})
    res = read_source(DataConfig(source="poetry-instructions", kind="instructions"), None)
    assert calls == [("isaacrehg/poetry-instructions", None, None)]
    assert {k: len(v) for k, v in res.splits.items()} == {"train": 20, "val": 3, "test": 4}
    assert res.origin == "hub:isaacrehg/poetry-instructions"

    stage = StageConfig(name="sft", kind="sft", data=DataConfig(source="poetry-instructions", kind="instructions",
                                                                split={"val": 0.05, "test": 0.15}))
    prepared = prepare_stage_data(stage, None)
    assert prepared.report["splits"] == {"train": 20, "val": 3, "test": 4}  # kept, not re-split
    assert prepared.splits["val"][0]["messages"][0]["content"] == "val poem 0?"


def test_poem_preset_column_mapping_and_val_carved_from_train(fake_hub):
    served, _ = fake_hub
    served["suayptalha/Poetry-Foundation-Poems"] = datasets.DatasetDict({"train": datasets.Dataset.from_dict({
        "Title": [f"\r\r\n   Poem {i}\r\r\n  " for i in range(10)],
        "Poem": [f"\r\r\nline one {i}\r\r\nline two\r\r\n" for i in range(10)],
        "Poet": ["Someone"] * 10, "Tags": ["Nature,Love"] * 10})})
    stage = StageConfig(name="dapt", kind="dapt", data=DataConfig(source="poetry-foundation"))
    prepared = prepare_stage_data(stage, None)
    assert prepared.report["splits"] == {"train": 8, "val": 2, "test": 0}
    rec = prepared.splits["train"][0]
    assert rec["title"].startswith("Poem ") and rec["author"] == "Someone" and rec["tags"] == ["Nature", "Love"]
    assert rec["text"].startswith("line one") and rec["text"].endswith("line two")


def test_hub_split_and_max_rows(fake_hub):
    served, calls = fake_hub
    served["me/poems"] = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [f"p {i}" for i in range(30)]}),
                                               "test": datasets.Dataset.from_dict({"text": ["t"] * 10})})
    res = read_source(DataConfig(source="me/poems", hub_split="train"), None)
    assert not res.presplit and res.rows_read == 30 and calls[-1] == ("me/poems", None, "train")
    res = read_source(DataConfig(source="me/poems", max_rows=8), None)
    assert {k: len(v) for k, v in res.splits.items()} == {"train": 6, "test": 2}


def test_gutenberg_hub_groups_lines_within_books(fake_hub):
    served, _ = fake_hub
    lines = [f"book1 line {i}" for i in range(10)] + [f"book2 line {i}" for i in range(5)]
    ids = [1] * 10 + [2] * 5
    served["biglam/gutenberg-poetry-corpus"] = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"line": lines, "gutenberg_id": ids})})
    res = read_source(DataConfig(source="gutenberg-hub", passage_lines=4), None)
    texts = [r["text"] for r in res.rows]
    # book 1: 4 + 4 + a last 2 (kept: half a passage); book 2: 4, its last 1 line is dropped
    assert [t.count("\n") + 1 for t in texts] == [4, 4, 2, 4]
    assert all(len({line.split()[0] for line in t.split("\n")}) == 1 for t in texts)  # never across books


def test_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_TIMEOUT_S: False)
    with pytest.raises(DataError) as info:
        read_source(DataConfig(source="quill-tests/surely-not-cached-anywhere"), None)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("quill-tests/surely-not-cached-anywhere: cannot reach the Hugging Face hub (offline?)")


def test_connection_error_from_datasets_is_the_offline_message(monkeypatch):
    def refuse(*a, **kw):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_TIMEOUT_S: True)
    with pytest.raises(DataError, match=r"^x/y: cannot reach the Hugging Face hub \(offline\?\)"):
        read_source(DataConfig(source="x/y"), None)


def test_saved_dataset_folder_uses_the_same_path(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"poem": ["a b", "c d"]}),
                          "validation": datasets.Dataset.from_dict({"poem": ["e f"]})}).save_to_disk(tmp_path / "ds")
    res = read_source(DataConfig(source=str(tmp_path / "ds")), None)
    assert {k: len(v) for k, v in res.splits.items()} == {"train": 2, "val": 1}
