"""Shard folders: atomic writes, settings checks, and resuming after a crash mid-shard."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from geoalign.data import shards
from geoalign.data.shards import ShardWriter, StoreKind, read_index
from geoalign.errors import DataError

KIND = StoreKind("geoalign-test-store", 1, label="test store", array_key="values")
TOTAL, SIZE = 10, 4  # shards cover rows [0, 4), [4, 8), [8, 10)


def _open(folder: Path, **kw) -> ShardWriter:
    settings = {"shard_size": SIZE, "model": "m"} | kw.pop("settings", {})
    return ShardWriter(folder, KIND, settings, source="test", **kw)


def _write(index: ShardWriter, shard: int) -> None:
    start, stop = index.shard_range(shard, TOTAL)
    values = np.arange(start, stop, dtype=np.float32)
    meta = pa.table({"position": np.arange(start, stop, dtype=np.int64)})
    index.record_shard(shard, values, meta, start=start, stop=stop, failed=0)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    shards.atomic_write(path, lambda fh: fh.write(b"old"))

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        shards.atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # temp file removed


def test_resume_after_a_crash_mid_shard_gives_the_same_bytes(tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    index = _open(reference)
    for k in range(3):
        _write(index, k)
    index.mark_complete()

    out = tmp_path / "out"
    index = _open(out)
    _write(index, 0)
    _write(index, 1)
    # killed while writing shard 2: its array file in place, a temp file half written, no entry
    (out / "shard-00002.npy").write_bytes(b"partial")
    (out / f".shard-00002.parquet.tmp-{os.getpid() + 1}").write_bytes(b"partial")
    # and shard 1's array truncated afterwards (a disk that lost its tail)
    (out / "shard-00001.npy").write_bytes((out / "shard-00001.npy").read_bytes()[:10])

    index = _open(out)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert index.done_shards == {0}
    assert index.pending(TOTAL) == ([1, 2], 4)
    for k in index.pending(TOTAL)[0]:
        _write(index, k)
    assert index.covered == TOTAL
    index.mark_complete()
    assert _files(out) == _files(reference)
    entry = read_index(out, KIND)["shards"][2]
    assert entry["values"] == "shard-00002.npy" and (entry["start"], entry["stop"]) == (8, 10)
    assert entry["sha256"] == shards.sha256_file(out / "shard-00002.npy")


def test_settings_are_checked_on_reopen(tmp_path: Path) -> None:
    _write(_open(tmp_path, settings={"total": None}), 0)
    with pytest.raises(DataError, match="has model='m', this run asks for 'other'"):
        _open(tmp_path, settings={"model": "other"})
    with pytest.raises(DataError, match="total=None"):
        _open(tmp_path, settings={"total": TOTAL})
    adopted = _open(tmp_path, settings={"total": TOTAL}, adopt_missing=True)
    assert adopted.index["total"] == TOTAL and adopted.done_shards == {0}
    (tmp_path / "notes.txt").write_text("keep me")
    fresh = _open(tmp_path, settings={"model": "other"}, overwrite=True)
    assert fresh.done_shards == set() and fresh.index["model"] == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "notes.txt"]


def test_read_index_refuses_foreign_and_newer_indexes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a test store"):
        read_index(tmp_path, KIND)
    _open(tmp_path)
    other = StoreKind("geoalign-other", 1, label="other store", array_key="x")
    with pytest.raises(DataError, match="not a geoalign other store index"):
        read_index(tmp_path, other)
    index = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps(index | {"version": 2}))
    with pytest.raises(DataError, match="newer geoalign"):
        read_index(tmp_path, KIND)


def test_recording_errors_and_thread_map() -> None:
    def load(x: int) -> int:
        if x == 2:
            raise ValueError("bad pixels")
        if x == 3:
            raise KeyError()
        return x * 10

    safe = shards.recording_errors(load)
    for workers in (0, 2):
        with shards.thread_map(workers) as pmap:
            got = list(pmap(safe, range(4)))
        assert got == [(0, ""), (10, ""), (None, "ValueError: bad pixels"), (None, "KeyError")]


def test_reader_warns_about_an_unfinished_store_and_pickles_without_maps(tmp_path: Path) -> None:
    index = _open(tmp_path, settings={"manifest_hash": "abc"})
    _write(index, 0)
    with pytest.warns(UserWarning, match=r"test store is incomplete \(1 shards written\)") as rec:
        reader = Subclassed(tmp_path)
    assert rec[0].filename == __file__  # the warning points at the code that opened the store
    assert (reader.manifest_hash, reader.n_failed, reader.num_shards) == ("abc", 0, 1)
    reader._mmaps[0] = np.zeros(1)
    assert pickle.loads(pickle.dumps(reader))._mmaps == {}
    index.mark_complete()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Subclassed(tmp_path).complete


class Subclassed(shards.ShardReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path, KIND)


def _complete_store(folder: Path) -> dict[str, bytes]:
    index = _open(folder, settings={"total": TOTAL})
    for k in range(3):
        _write(index, k)
    index.mark_complete()
    return _files(folder)


@pytest.mark.parametrize("damage", ["torn", "empty", "binary", "missing"])
def test_a_damaged_index_is_rebuilt_from_the_whole_shards(tmp_path: Path, damage: str) -> None:
    """A torn index.json used to be detected and refused; the shards beside it are kept now."""
    reference = _complete_store(tmp_path / "ref")
    out = tmp_path / "out"
    _complete_store(out)
    path = out / "index.json"
    text = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(
            {"torn": text[: len(text) // 2], "empty": b"", "binary": b"\xff\xfe"}[damage]
        )
    (out / "shard-00001.npy").write_bytes((out / "shard-00001.npy").read_bytes()[:20])  # torn too
    with pytest.warns(UserWarning, match=r"rebuilt it from 2 whole shard file\(s\)"):
        index = _open(out, settings={"total": TOTAL})
    assert index.recovered == [0, 2] and index.pending(TOTAL) == ([1], 6)
    _write(index, 1)
    index.mark_complete()
    assert _files(out) == reference


def test_rebuild_skips_shards_of_another_shard_size(tmp_path: Path) -> None:
    _complete_store(tmp_path)
    (tmp_path / "index.json").write_text("{")
    with pytest.warns(UserWarning, match="from 0 whole"):  # size-4 shards are not size-3 shards
        index = _open(tmp_path, settings={"total": TOTAL, "shard_size": 3})
    assert index.recovered == [] and index.pending(TOTAL) == ([0, 1, 2, 3], 0)
    assert shards.recorded_shard_size(tmp_path) == 3  # the rebuilt index is saved at once


def test_recorded_shard_size_comes_from_index_or_shard_files(tmp_path: Path) -> None:
    assert shards.recorded_shard_size(tmp_path / "none") is None
    _complete_store(tmp_path)
    assert shards.recorded_shard_size(tmp_path) == SIZE
    (tmp_path / "index.json").write_text("[1, 2")
    assert shards.recorded_shard_size(tmp_path) == SIZE  # shard 1 starts at row 4


def test_corrupt_index_message_says_how_to_repair(tmp_path: Path) -> None:
    _complete_store(tmp_path)
    (tmp_path / "index.json").write_text('{"format": ')
    with pytest.raises(shards.CorruptIndexError, match="rerun the extraction to rebuild it"):
        read_index(tmp_path, KIND)
