"""The data cache: a hit skips the build, a changed key (file, config, tokenizer) misses, arrays round-trip."""
import json

import pytest

from quill.data.cache import cache_key, cached, load_sequences, save_sequences, tokenizer_fingerprint
from quill.data.pack import Example, pack_examples


def _store(tmp_path):
    calls = []

    def run(key, value="v"):
        def build():
            calls.append(value)
            return value
        return cached(key, build, save=lambda v, f: (f / "v.json").write_text(json.dumps(v)),
                      load=lambda f: json.loads((f / "v.json").read_text()), root=tmp_path)
    return run, calls


def test_hit_skips_build_and_changed_key_misses(tmp_path):
    run, calls = _store(tmp_path)
    assert run({"a": 1}) == "v" and calls == ["v"]
    assert run({"a": 1}, "other") == "v" and calls == ["v"]          # hit: stored value, no build
    assert run({"a": 2}, "w") == "w" and calls == ["v", "w"]         # changed key: miss
    assert run(None, "x") == "x" and run(None, "x") == "x" and calls[-2:] == ["x", "x"]  # uncacheable: always builds


def test_encoded_split_is_keyed_by_the_records_content(tmp_path, monkeypatch):
    """encode_split's cache: the same records load from disk; a changed record (whatever file it came
    from) is tokenized again."""
    from quill import models
    from quill.config import ModelConfig
    from quill.data import encode

    _, tok, tpl = models.load_base(ModelConfig(name="tiny-gpt2"))
    monkeypatch.setenv("QUILL_CACHE", str(tmp_path))   # after loading: the tiny model stays in the real cache
    calls = []
    real = encode.encode_examples
    monkeypatch.setattr(encode, "encode_examples", lambda *a, **k: calls.append(1) or real(*a, **k))
    recs = [{"text": "The sea is calm tonight."}, {"text": "The tide is full."}]
    first = encode.encode_split("poems", recs, tok, tpl, 64, True)
    again = encode.encode_split("poems", recs, tok, tpl, 64, True)
    assert len(calls) == 1 and [s.input_ids for s in again.sequences] == [s.input_ids for s in first.sequences]
    changed = encode.encode_split("poems", [recs[0], {"text": "The tide is high."}], tok, tpl, 64, True)
    assert len(calls) == 2 and changed.sequences != first.sequences
    assert list((tmp_path / "data").iterdir())


def test_corrupt_entry_is_rebuilt(tmp_path):
    run, calls = _store(tmp_path)
    run({"a": 1})
    (tmp_path / cache_key({"a": 1}) / "v.json").write_text("not json")
    assert run({"a": 1}, "again") == "again" and calls == ["v", "again"]


@pytest.mark.parametrize("sft", [False, True])
def test_sequences_round_trip(tmp_path, sft):
    exs = []
    for n in (5, 9, 3, 14, 7):
        ids = list(range(100 + n, 100 + 2 * n))
        labels = [-100] * (n // 2) + ids[n // 2:] if sft else list(ids)
        exs.append(Example(ids, labels))
    if sft:
        exs.append(Example([1, 2, 3], [-100, 7, 8]))  # a label that is not its token: stored in full
    seqs = pack_examples(exs, block_size=16, seed=0)
    save_sequences(seqs, tmp_path, {"examples": len(exs)})
    back, meta = load_sequences(tmp_path)
    assert meta == {"examples": len(exs)}
    assert [(s.input_ids, s.labels, s.position_ids) for s in back] == [(s.input_ids, s.labels, s.position_ids) for s in seqs]


def test_tokenizer_fingerprint_changes_with_vocab():
    class Tok:
        name_or_path = "t"
        special_tokens_map = {"eos_token": "</s>"}

        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab
    a, b = tokenizer_fingerprint(Tok({"a": 0})), tokenizer_fingerprint(Tok({"a": 1}))
    assert a["name"] == b["name"] and a["hash"] != b["hash"]
