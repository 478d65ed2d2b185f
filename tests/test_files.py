"""quill.files: a failed write keeps the old version and leaves no temp file; a folder write replaces the
old folder whole; a concurrent reader only ever sees a complete version."""
import json
import os
import threading

import pytest

from quill.files import (atomic_dir, atomic_open, atomic_path, atomic_write_bytes, atomic_write_json,
                         atomic_write_text, read_json, read_jsonl, temp_sibling)


class Boom(Exception):
    pass


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_replace_the_file_and_leave_only_it(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": [1, 2], "é": float("nan")})
    assert read_json(path)["x"] == [1, 2] and "é" in path.read_text(encoding="utf-8")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert names(path.parent) == ["a.json"]
    assert temp_sibling(path).parent == path.parent and temp_sibling(path).name.startswith("a.json.tmp-")


def test_a_failure_mid_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("old\n")
    with pytest.raises(Boom):
        with atomic_open(path) as f:
            f.write("half of the new")
            f.flush()
            raise Boom
    assert path.read_text() == "old\n" and names(tmp_path) == ["data.jsonl"]
    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")    # a library writing to the path it was handed, then failing
            raise Boom
    assert path.read_text() == "old\n" and names(tmp_path) == ["data.jsonl"]
    with pytest.raises(TypeError):
        atomic_write_json(path, {"not json": object()})
    assert path.read_text() == "old\n" and names(tmp_path) == ["data.jsonl"]


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"v": 1})

    def replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    assert read_json(path) == {"v": 1} and names(tmp_path) == ["summary.json"]


def test_a_concurrent_reader_sees_the_old_or_the_new_file_whole(tmp_path):
    path = tmp_path / "big.txt"
    versions = ["a" * 2_000_000, "b" * 3_000_000]
    atomic_write_text(path, versions[0], fsync=False)
    done, seen = threading.Event(), []

    def writer():
        for i in range(30):
            atomic_write_text(path, versions[i % 2], fsync=False)
        done.set()
    t = threading.Thread(target=writer)
    t.start()
    while True:
        finished = done.is_set()
        seen.append(path.read_text())
        if finished:
            break
    t.join()
    assert seen and all(text in versions for text in seen)


def test_folder_write_replaces_the_old_folder_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        (tmp / "a").write_text("1")
        (tmp / "stale").write_text("only in the old one")
    with atomic_dir(target) as tmp:
        assert list(tmp.iterdir()) == []                   # a fresh folder, not a copy of the old one
        (tmp / "a").write_text("2")
    assert names(target) == ["a"] and (target / "a").read_text() == "2"
    assert names(tmp_path) == ["model"]


@pytest.mark.parametrize("where", ["inside", "between renames"])
def test_a_failed_folder_write_keeps_the_old_folder(tmp_path, where):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")

    def boom():
        raise Boom
    with pytest.raises(Boom):
        with atomic_dir(target, before_swap=boom if where != "inside" else None) as tmp:
            (tmp / "a").write_text("new")
            if where == "inside":
                raise Boom
    assert (target / "a").read_text() == "old" and names(tmp_path) == ["model"]


def test_fixed_temp_and_old_names_for_shared_and_findable_folders(tmp_path):
    target, tmp, old = tmp_path / "ckpt", tmp_path / "ckpt.tmp", tmp_path / "ckpt.old"
    seen = []
    with atomic_dir(target, tmp=tmp, old=old, fsync_parent=True) as into:
        assert into == tmp and tmp.is_dir()
        (into / "state.json").write_text("1")
    with atomic_dir(target, tmp=tmp, old=old, before_swap=lambda: seen.append(sorted(os.listdir(old)))) as into:
        (into / "state.json").write_text("2")
    assert seen == [["state.json"]]                        # the previous folder sat whole under `old`
    assert (target / "state.json").read_text() == "2" and names(tmp_path) == ["ckpt"]


def test_cache_folders_are_never_replaced(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "v").write_text("built by another process")
    with pytest.raises(OSError):
        with atomic_dir(target, replace=False) as tmp:
            (tmp / "v").write_text("mine")
    assert (target / "v").read_text() == "built by another process" and names(tmp_path) == ["entry"]


def test_readers(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert read_json(tmp_path / "none.json", {"d": 1}) == {"d": 1} and read_jsonl(path) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"\n')
    assert read_jsonl(path, skip_broken=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)
