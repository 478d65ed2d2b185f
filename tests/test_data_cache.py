"""The data cache: a hit skips the build, a changed key (file, config, tokenizer) misses, arrays round-trip."""
import json
import os

import pytest

from quill.data.cache import cache_key, cached, load_sequences, save_sequences, source_fingerprint, tokenizer_fingerprint
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


def test_changed_source_file_changes_key(tmp_path):
    src = tmp_path / "poems.jsonl"
    src.write_text('{"text": "a"}\n')
    k1 = cache_key({"source": source_fingerprint(src), "block": 512})
    assert k1 == cache_key({"source": source_fingerprint(src), "block": 512})
    assert k1 != cache_key({"source": source_fingerprint(src), "block": 256})
    src.write_text('{"text": "a longer poem"}\n')
    os.utime(src, ns=(1, 1))
    assert k1 != cache_key({"source": source_fingerprint(src), "block": 512})
    assert source_fingerprint("no/such/hub-id", tmp_path) is None


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
