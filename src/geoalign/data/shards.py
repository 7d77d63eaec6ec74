"""Crash-safe, resumable shard folders: the file mechanics every geoalign store shares.

Extraction over millions of photos takes hours, so a store must survive being killed at any
moment. A store folder holds `index.json` and, per shard k, `shard-0000k.npy` (the array) and
`shard-0000k.parquet` (one metadata row per source row). Shard k always covers source rows
[k*S, (k+1)*S) -- fixed by the shard size, never by when a run stopped. Every file is written to a
temporary name, fsynced and renamed into place, and the index is rewritten the same way after each
shard; so a killed run leaves whole shards or none, and a rerun skips the shards the index lists
(whose array file still has the recorded size) and redoes the rest, giving the same bytes as an
uninterrupted run. The index also holds the settings the shards were made with (shard size, model,
manifest hash...), so a rerun with other settings is refused instead of mixing two kinds of shard.

`geoalign.data.feature_store` and `geoalign.data.segmentation_store` build on `ShardWriter` and
`ShardReader`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geoalign._version import __version__
from geoalign.errors import DataError

INDEX_NAME = "index.json"
# Every file a store writes: shard files, and the hidden temporary files they are written through.
_STORE_FILE_RE = re.compile(r"^(\.)?shard-\d{5,}\.(npy|parquet)(\.tmp-\d+)?$")


# ----------------------------------------------------------------------------------------------
# Atomic file operations


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a temp file in the same folder, fsync, then os.replace: all or nothing.

    `write(fh)` gets a binary file handle. Readers see the old file or the whole new one, never
    a partial one; the temp file (`.<name>.tmp-<pid>`) is removed if `write` fails.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (shards can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def shard_file_names(shard: int) -> tuple[str, str]:
    """(array file, metadata file) of shard `shard`."""
    return f"shard-{shard:05d}.npy", f"shard-{shard:05d}.parquet"


def remove_temp_files(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (hidden, with `.tmp-` in the name)."""
    for p in folder.iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name:
            p.unlink(missing_ok=True)


def remove_store_files(folder: Path) -> None:
    """Delete only what a store writes (index, shard and temp files), never anything else."""
    (folder / INDEX_NAME).unlink(missing_ok=True)
    for p in folder.iterdir():
        if _STORE_FILE_RE.match(p.name) or (p.name.startswith(".") and ".tmp-" in p.name):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True)
class StoreKind:
    """What tells one kind of store apart: its index format and the names used in messages."""

    format: str  # the index's "format" value, e.g. "geoalign-feature-store"
    version: int  # the newest format version this code reads and writes
    label: str  # how messages call it, e.g. "feature store"
    array_key: str  # the key of a shard entry that names its .npy file ("features", "maps")


def read_index(folder: str | Path, kind: StoreKind) -> dict[str, Any]:
    """The parsed index.json of a `kind` store; DataError if absent, corrupt, foreign or too new."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{folder}: not a {kind.label} (no {INDEX_NAME})")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: corrupt index: {err}") from err
    if index.get("format") != kind.format:
        raise DataError(f"{path}: not a geoalign {kind.label} index")
    if index.get("version", 0) > kind.version:
        raise DataError(
            f"{path}: written by a newer geoalign (store format {index['version']}); upgrade"
        )
    return index


def meta_schema(*extra: tuple[str, pa.DataType]) -> pa.Schema:
    """Schema of a shard's metadata: where each row came from (manifest position, file row,
    image), the store's `extra` columns, then whether it worked and why not."""
    return pa.schema(
        [
            ("position", pa.int64()),
            ("row", pa.int64()),
            ("image", pa.string()),
            *extra,
            ("ok", pa.bool_()),
            ("error", pa.string()),
        ]
    )


class ShardWriter:
    """Base of the store writers: the index of a store being written, one entry per shard.

    Opening a folder that holds an index resumes it: every setting given (not None) must equal
    the recorded one, else DataError (or, with `adopt_missing`, a setting the index lacks is
    taken over). Entries whose files are missing or truncated are forgotten, so those shards are
    redone. `overwrite=True` deletes the old store files first. `settings` must hold shard_size;
    a "total" setting (source rows) is the default of `shard_range` and `pending`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        kind: StoreKind,
        settings: Mapping[str, Any],
        *,
        source: str | None = None,
        overwrite: bool = False,
        adopt_missing: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.kind = kind
        path = self.out_dir / INDEX_NAME
        if path.exists() and overwrite:
            remove_store_files(self.out_dir)
        if path.exists():
            self.index = read_index(self.out_dir, kind)
            for key, value in settings.items():
                have = self.index.get(key)
                if value is None or have == value:
                    continue
                if have is None and adopt_missing:
                    self.index[key] = value
                    continue
                raise DataError(
                    f"{self.out_dir}: existing {kind.label} has {key}={have!r}, this run asks "
                    f"for {value!r}; use a new folder or overwrite it "
                    "(overwrite=True, CLI --overwrite)"
                )
            self._drop_broken_shards()
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.index = {
                "format": kind.format,
                "version": kind.version,
                **settings,
                "source": source,
                "complete": False,
                "geoalign_version": __version__,
                "shards": [],
            }
        remove_temp_files(self.out_dir)
        self.save()

    @property
    def shard_size(self) -> int:
        return int(self.index["shard_size"])

    @property
    def done_shards(self) -> set[int]:
        return {int(e["shard"]) for e in self.index["shards"]}

    @property
    def covered(self) -> int:
        """Source rows the written shards cover."""
        return sum(e["stop"] - e["start"] for e in self.index["shards"])

    def shard_range(self, shard: int, total: int | None = None) -> tuple[int, int]:
        """Source rows [start, stop) of shard `shard` (of `total` rows, default the index's)."""
        total = int(self.index["total"]) if total is None else total
        start = shard * self.shard_size
        return start, min(start + self.shard_size, total)

    def pending(self, total: int | None = None) -> tuple[list[int], int]:
        """(shards still to write, source rows the written ones cover) of `total` rows."""
        total = int(self.index["total"]) if total is None else total
        n_shards = math.ceil(total / self.shard_size) if total else 0
        todo = [k for k in range(n_shards) if k not in self.done_shards]
        return todo, total - sum(b - a for a, b in (self.shard_range(k, total) for k in todo))

    def _drop_broken_shards(self) -> None:
        kept = []
        for e in self.index["shards"]:
            array, meta = self.out_dir / e[self.kind.array_key], self.out_dir / e["meta"]
            if array.is_file() and meta.is_file() and array.stat().st_size == e["nbytes"]:
                kept.append(e)
        self.index["shards"] = kept

    def save(self) -> None:
        """Rewrite index.json atomically (shards in order) and make the rename durable."""
        self.index["shards"].sort(key=lambda e: e["shard"])
        text = json.dumps(self.index, indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.out_dir / INDEX_NAME, lambda fh: fh.write(text))
        fsync_dir(self.out_dir)

    def record_shard(
        self, shard: int, array: np.ndarray, meta: pa.Table, **fields: Any
    ) -> dict[str, Any]:
        """Write shard `shard`'s two files, then list it in the index (with `fields`).

        The index entry is written last: a crash before it leaves a shard the index does not
        list, which the next run redoes. Returns the entry.
        """
        array_name, meta_name = shard_file_names(shard)
        atomic_write(self.out_dir / array_name, lambda fh: np.save(fh, array, allow_pickle=False))
        atomic_write(self.out_dir / meta_name, lambda fh: pq.write_table(meta, fh))
        entry = {
            "shard": int(shard),
            self.kind.array_key: array_name,
            "meta": meta_name,
            **fields,
            "nbytes": (self.out_dir / array_name).stat().st_size,
            "sha256": sha256_file(self.out_dir / array_name),
        }
        self.index["shards"] = [e for e in self.index["shards"] if e["shard"] != shard] + [entry]
        self.save()
        return entry

    def mark_complete(self) -> None:
        self.index["complete"] = True
        self.save()


class ShardReader:
    """Base of the store readers: the index, its shards in row order, and lazily opened memory
    maps (dropped when pickled, so DataLoader workers open their own)."""

    def __init__(self, path: str | Path, kind: StoreKind) -> None:
        self.path = Path(path)
        self.index = read_index(self.path, kind)
        self._shards: list[dict[str, Any]] = sorted(self.index["shards"], key=lambda e: e["start"])
        self._mmaps: dict[int, np.ndarray] = {}
        if not self.complete:
            warnings.warn(
                f"{self.path}: {kind.label} is incomplete ({len(self._shards)} shards written); "
                "rerun the extraction to finish it",
                stacklevel=3,  # the caller of the subclass's constructor
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        return state

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

    @property
    def manifest_hash(self) -> str | None:
        return self.index.get("manifest_hash")

    @property
    def n_failed(self) -> int:
        return int(sum(e["failed"] for e in self._shards))

    @property
    def num_shards(self) -> int:
        return len(self._shards)


# ----------------------------------------------------------------------------------------------
# Extraction loops


def error_text(err: BaseException) -> str:
    """What a row's `error` column records: the message, prefixed by the exception's type."""
    text = str(err) or type(err).__name__
    return text if type(err).__name__ in text else f"{type(err).__name__}: {text}"


def recording_errors(load: Callable[[Path], Any]) -> Callable[[Path], tuple[Any, str]]:
    """`load` made total: (item, "") on success, (None, error text) on any failure.

    An unreadable image is recorded in its row and never stops an hours-long extraction.
    """

    def safe(path: Path) -> tuple[Any, str]:
        try:
            return load(path), ""
        except Exception as err:  # any decoder/IO failure is recorded per row, never fatal
            return None, error_text(err)

    return safe


@contextmanager
def thread_map(workers: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """`map`, run in `workers` threads when workers > 0 (image decoding releases the GIL)."""
    if workers <= 0:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map


@contextmanager
def progress_bar(
    enabled: bool, total: int, done: int, label: str
) -> Iterator[Callable[[int], Any]]:
    """A rich progress bar on stderr starting at `done` of `total`; yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(label, total=total, completed=done)
    bar.start()
    try:
        yield lambda n: bar.advance(task, n)
    finally:
        bar.stop()
