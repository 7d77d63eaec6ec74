"""Feature store: backbone features computed once, kept on disk in shards, read by memory map.

Why shards plus an index: extraction over millions of photos takes hours, so it must survive being
killed. Shard k always holds manifest positions [k*S, (k+1)*S) -- fixed by the shard size, never by
when a run stopped -- and each shard is written to a temporary file and renamed into place, after
which the index (index.json) is rewritten the same way. A rerun skips the shards the index lists and
redoes the rest, so an interrupted-then-resumed run gives byte-identical shards to an uninterrupted
one (those mechanics live in `geoalign.data.shards`). The index also records the backbone spec and
the manifest hash, so features are never silently paired with the wrong model or the wrong images.

Layout of a store folder:
    index.json                  format, dim, dtype, shard size, backbone, manifest hash, shards
    shard-00000.npy             features of the rows that encoded, [n_ok, dim], float16 or float32
    shard-00000.parquet         every manifest row of the shard: position, row, image, lat, lon,
                                ok, error (images that failed to load are recorded here, not fatal)
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset

from geoalign.data.manifest import Manifest, content_hash
from geoalign.data.shards import (
    INDEX_NAME,
    ShardReader,
    ShardWriter,
    StoreKind,
    meta_schema,
    progress_bar,
    read_index,
    recorded_shard_size,
    recording_errors,
    sha256_file,
    shard_file_names,
    thread_map,
)
from geoalign.data.tables import read_table
from geoalign.data.wds import ShardManifest
from geoalign.errors import DataError

FORMAT = "geoalign-feature-store"
FORMAT_VERSION = 1
KIND = StoreKind(FORMAT, FORMAT_VERSION, label="feature store", array_key="features")
DEFAULT_SHARD_SIZE = 16384
DTYPES = {"float16": np.float16, "float32": np.float32}
_META_SCHEMA = meta_schema(("lat", pa.float64()), ("lon", pa.float64()))


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"feature dtype must be float16 or float32, not {name}")
    return name


# ----------------------------------------------------------------------------------------------
# Writing


class FeatureStoreWriter(ShardWriter):
    """Writes shards and keeps index.json current after each one (crash-safe, resumable).

    Two ways to write: `write_shard(k, ...)` for shard-addressed work (extraction, which may
    resume), or `add(...)` to stream rows in order (imports). Reopening a folder with the same
    settings resumes it; different settings (dim, dtype, shard size, backbone, manifest hash) are
    refused unless `overwrite=True`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        dim: int | None = None,
        dtype: str = "float16",
        shard_size: int = DEFAULT_SHARD_SIZE,
        *,
        total: int | None = None,
        backbone: dict[str, Any] | str | None = None,
        manifest_hash: str | None = None,
        source: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        self.dtype = _dtype_name(dtype)
        self._buffer: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._buffered = 0
        settings = {
            "dim": int(dim) if dim is not None else None,
            "dtype": self.dtype,
            "shard_size": int(shard_size),
            "total": total,
            "backbone": backbone,
            "manifest_hash": manifest_hash,
        }
        # A setting an earlier run left open (dim before its first shard, say) is taken over.
        super().__init__(
            out_dir, KIND, settings, source=source, overwrite=overwrite, adopt_missing=True
        )
        self.dim: int | None = self.index.get("dim")
        shards = self.index["shards"]
        self._next_position = int(shards[-1]["stop"]) if shards else 0

    def _recover_fields(
        self, shard: int, array: np.ndarray, meta: pa.Table
    ) -> dict[str, Any] | None:
        """A shard on disk is taken back only with this store's dtype, dim and row count."""
        fields = super()._recover_fields(shard, array, meta)
        if fields is None or array.ndim != 2 or array.dtype != np.dtype(self.dtype):
            return None
        n_ok = fields["stop"] - fields["start"] - fields["failed"]
        if array.shape[0] != n_ok or self.index.get("dim") not in (None, array.shape[1]):
            return None
        self.index["dim"] = int(array.shape[1])
        return {**fields, "count": n_ok}

    # -- writing ----------------------------------------------------------------------------
    def write_shard(
        self,
        shard: int,
        features: np.ndarray,
        meta: dict[str, Sequence[Any] | np.ndarray],
    ) -> None:
        """Write shard `shard`: features of the ok rows, and metadata for every row of the shard.

        meta keys: position, row, image, lat, lon, ok, error (all of the shard's length).
        """
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D [rows, dim], got shape {features.shape}")
        if self.dim is None:
            self.dim = int(features.shape[1])
            self.index["dim"] = self.dim
        if features.shape[1] != self.dim:
            raise DataError(
                f"{self.out_dir}: shard {shard} has features of dim {features.shape[1]}, "
                f"the store holds dim {self.dim}"
            )
        table = pa.table({name: meta[name] for name in _META_SCHEMA.names}, schema=_META_SCHEMA)
        n_ok = int(np.asarray(meta["ok"], dtype=bool).sum())
        if n_ok != features.shape[0]:
            raise ValueError(f"shard {shard}: {n_ok} rows are ok but {features.shape[0]} features")
        positions = np.asarray(meta["position"], dtype=np.int64)
        self.record_shard(
            shard,
            np.ascontiguousarray(features, dtype=DTYPES[self.dtype]),
            table,
            start=int(positions[0]) if len(positions) else 0,
            stop=int(positions[-1]) + 1 if len(positions) else 0,
            count=n_ok,
            failed=int(len(positions) - n_ok),
        )

    def add(
        self,
        features: np.ndarray,
        coords: np.ndarray,
        ids: Sequence[str] | None = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        """Append rows in order; full shards are written as they fill up."""
        features = np.asarray(features)
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        n = len(features)
        if len(coords) != n:
            raise ValueError(f"{n} feature rows but {len(coords)} coordinates")
        start = self._next_position + self._buffered
        positions = np.arange(start, start + n, dtype=np.int64)
        meta = {
            "position": positions,
            "row": np.asarray(rows, dtype=np.int64) if rows is not None else positions + 1,
            "image": [str(i) for i in ids] if ids is not None else [str(p) for p in positions],
            "lat": coords[:, 0],
            "lon": coords[:, 1],
            "ok": np.ones(n, dtype=bool),
            "error": [""] * n,
        }
        self._buffer.append((features, meta))
        self._buffered += n
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        feats = np.concatenate([f for f, _ in self._buffer])
        metas = {
            k: np.concatenate([np.asarray(m[k]) for _, m in self._buffer])
            for k in self._buffer[0][1]
        }
        shard = self._next_position // self.shard_size
        self.write_shard(shard, feats[:n], {k: v[:n] for k, v in metas.items()})
        self._next_position += n
        self._buffered -= n
        self._buffer = [(feats[n:], {k: v[n:] for k, v in metas.items()})] if self._buffered else []

    def finalize(self) -> FeatureStore:
        """Write any partial last shard, mark the store complete and return a reader."""
        if self._buffered:
            self._flush(self._buffered)
        total = self.index.get("total")
        covered = self.covered
        if total is None:
            self.index["total"] = covered
        elif covered != total:
            raise DataError(
                f"{self.out_dir}: shards cover {covered} of {total} rows; cannot finalize"
            )
        self.mark_complete()
        return FeatureStore(self.out_dir)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()


# ----------------------------------------------------------------------------------------------
# Extraction


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach()
        if out.dtype not in (torch.float32, torch.float64):
            out = out.float()
        return out.cpu().numpy()
    return np.asarray(out)


def extract_features(
    manifest: Manifest | ShardManifest,
    encode_fn: Callable[[list[Any]], Any],
    out_dir: str | Path,
    *,
    load_fn: Callable[[Any], Any] | None = None,
    batch_size: int = 64,
    dtype: str = "float16",
    shard_size: int | None = None,
    num_workers: int = 0,
    backbone: dict[str, Any] | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> FeatureStore | None:
    """Encode every image of `manifest` with `encode_fn` into a feature store at `out_dir`.

    encode_fn(list of loaded images) -> array or tensor [len(list), dim]. load_fn(path) -> image
    (default: geoalign.data.images.load_image, or for a `ShardManifest` -- rows listed from
    webdataset shards -- a `ShardImageLoader`); a load failure, or non-finite features, marks that
    row failed (recorded in the shard metadata) without stopping the run. Exceptions raised by
    encode_fn stop the run; rerunning resumes from the last completed shard and yields the same
    bytes as an uninterrupted run. num_workers > 0 loads images in that many threads.
    shard_size=None keeps the size of the store being resumed, else DEFAULT_SHARD_SIZE. If the
    store's index.json is torn, it is rebuilt from the whole shards whose rows are this
    manifest's (images and coordinates compared); the others are redone.

    world_size > 1 (one process per rank, e.g. under torchrun): this rank encodes store shards
    k with k % world_size == rank (and none another rank's part already holds) into its own
    crash-safe part folder `out_dir/parts/part-<rank>`, and returns None; `merge_parts` then
    assembles the one store, byte-identical to a single-process run.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if load_fn is None:
        from geoalign.data.wds import ShardImageLoader, ShardManifest

        if isinstance(manifest, ShardManifest):
            load_fn = ShardImageLoader()
        else:
            from geoalign.data.images import load_image

            load_fn = load_image
    coords = manifest.coords()
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        rows = manifest.rows[bad][:10].tolist()
        raise DataError(
            f"{manifest.source or '<manifest>'}: {int(bad.sum())} rows have invalid coordinates "
            f"(e.g. rows {rows}); clean the manifest first (Manifest.clean)"
        )
    total = len(manifest)
    out_dir = Path(out_dir)
    if shard_size is None:
        recorded = None if overwrite else recorded_shard_size(out_dir)
        if recorded is None and world_size > 1 and not overwrite:
            recorded = next(filter(None, map(recorded_shard_size, _part_dirs(out_dir))), None)
        shard_size = recorded or DEFAULT_SHARD_SIZE
    settings = dict(
        total=total,
        backbone=backbone,
        manifest_hash=manifest.content_hash(),
        source=str(manifest.source) if manifest.source else None,
    )
    if world_size > 1:
        writer = FeatureStoreWriter(
            part_dir(out_dir, rank), None, dtype, shard_size, overwrite=overwrite, **settings
        )
    else:
        writer = FeatureStoreWriter(
            out_dir, None, dtype, shard_size, overwrite=overwrite, **settings
        )
    paths = manifest.paths()
    images = manifest.images
    rows = manifest.rows
    _forget_foreign_shards(writer, images, coords)
    todo, done_rows = writer.pending(total)
    if world_size > 1:
        elsewhere = _shards_in_other_parts(out_dir, rank, writer.index)
        todo = [k for k in todo if k % world_size == rank and k not in elsewhere]
        done_rows = total - sum(b - a for a, b in (writer.shard_range(k, total) for k in todo))
    load = recording_errors(load_fn)
    with (
        thread_map(num_workers) as pmap,
        progress_bar(progress, total, done_rows, f"features -> {writer.out_dir}") as advance,
    ):
        for shard in todo:
            start, stop = writer.shard_range(shard, total)
            ok = np.zeros(stop - start, dtype=bool)
            errors = [""] * (stop - start)
            chunks: list[np.ndarray] = []
            for b0 in range(start, stop, batch_size):
                b1 = min(b0 + batch_size, stop)
                batch_paths = paths[b0:b1]
                loaded = list(pmap(load, batch_paths))
                good = [i for i, (_, err) in enumerate(loaded) if not err]
                for i, (_, err) in enumerate(loaded):
                    if err:
                        errors[b0 - start + i] = err
                if good:
                    feats = _to_numpy(encode_fn([loaded[i][0] for i in good]))
                    if feats.ndim != 2 or feats.shape[0] != len(good):
                        raise ValueError(
                            f"encode_fn returned shape {tuple(feats.shape)} for a batch of "
                            f"{len(good)} images; expected ({len(good)}, dim)"
                        )
                    with np.errstate(over="ignore"):  # overflow -> inf -> row marked failed
                        cast = feats.astype(DTYPES[writer.dtype])
                    finite = np.isfinite(cast).all(axis=1)
                    for j, i in enumerate(good):
                        if finite[j]:
                            ok[b0 - start + i] = True
                        else:
                            errors[b0 - start + i] = f"non-finite features in {writer.dtype}"
                    chunks.append(cast[finite])
                advance(b1 - b0)
            dim = writer.dim or (chunks[0].shape[1] if chunks else None)
            if dim is None:
                raise DataError(
                    f"{writer.out_dir}: no image in shard {shard} could be encoded, so the "
                    f"feature size is unknown (first error: {errors[0]})"
                )
            feats = np.concatenate(chunks) if chunks else np.zeros((0, dim), writer.dtype)
            writer.write_shard(
                shard,
                feats,
                {
                    "position": np.arange(start, stop, dtype=np.int64),
                    "row": rows[start:stop],
                    "image": [str(x) for x in images[start:stop]],
                    "lat": coords[start:stop, 0],
                    "lon": coords[start:stop, 1],
                    "ok": ok,
                    "error": errors,
                },
            )
    if world_size > 1:
        return None
    store = writer.finalize()
    if store.n_failed:
        warnings.warn(
            f"{writer.out_dir}: {store.n_failed} of {total} images could not be encoded; "
            f"see FeatureStore.failures (CLI: geoalign features info)",
            stacklevel=2,
        )
    return store


# ----------------------------------------------------------------------------------------------
# Distributed extraction: one part per rank, then one merge


PARTS_DIR = "parts"


def part_dir(out_dir: str | Path, rank: int) -> Path:
    """The folder rank `rank` writes its shards to (a store index listing only its shards)."""
    return Path(out_dir) / PARTS_DIR / f"part-{rank:05d}"


def _part_dirs(out_dir: Path) -> list[Path]:
    parts = out_dir / PARTS_DIR
    return sorted(p for p in parts.glob("part-*") if p.is_dir()) if parts.is_dir() else []


def _shards_in_other_parts(out_dir: Path, rank: int, settings: dict[str, Any]) -> set[int]:
    """Shards other parts hold with these settings (a rerun with another world size keeps them)."""
    done: set[int] = set()
    for folder in _part_dirs(out_dir):
        if folder == part_dir(out_dir, rank):
            continue
        try:
            index = read_index(folder, KIND)
        except DataError:
            continue
        if all(index.get(k) == settings.get(k) for k in _PART_SETTINGS):
            done |= {int(e["shard"]) for e in index["shards"]}
    return done


_PART_SETTINGS = ("dtype", "shard_size", "total", "backbone", "manifest_hash")


def merge_parts(out_dir: str | Path, *, keep_parts: bool = False) -> FeatureStore:
    """Assemble the parts of a distributed extraction into the store at `out_dir`.

    Every shard must be in some part (else DataError naming the missing shards: rerun the ranks
    that hold them). Shard files are hard-linked (copied across filesystems) and listed in the
    order a single process writes them, so the store is byte-identical to a single-process run.
    A merge killed midway is simply rerun; the parts are deleted once the store is complete.
    """
    out_dir = Path(out_dir)
    parts = _part_dirs(out_dir)
    if not parts:
        if (out_dir / INDEX_NAME).is_file():
            return FeatureStore(out_dir)
        raise DataError(f"{out_dir}: no parts to merge (no {PARTS_DIR}/part-* folders)")
    indexes = {p: read_index(p, KIND) for p in parts}
    first = next(iter(indexes.values()))
    for folder, index in indexes.items():
        for key in (*_PART_SETTINGS, "source"):
            if index.get(key) != first.get(key):
                raise DataError(
                    f"{folder}: part has {key}={index.get(key)!r}, {parts[0]} has "
                    f"{first.get(key)!r}; parts of different runs cannot be merged"
                )
    entries: dict[int, tuple[Path, dict[str, Any]]] = {}
    dim = None
    for folder, index in indexes.items():
        dim = dim or index.get("dim")
        for entry in index["shards"]:
            entries.setdefault(int(entry["shard"]), (folder, entry))
    total, size = int(first["total"]), int(first["shard_size"])
    n_shards = -(-total // size)
    missing = [k for k in range(n_shards) if k not in entries]
    if missing:
        raise DataError(
            f"{out_dir}: shards {missing[:10]} of {n_shards} are in no part yet; rerun the "
            "extraction (the ranks resume), then merge"
        )
    writer = FeatureStoreWriter(
        out_dir,
        dim,
        first["dtype"],
        size,
        total=total,
        backbone=first.get("backbone"),
        manifest_hash=first.get("manifest_hash"),
        source=first.get("source"),
    )
    from geoalign.io_atomic import fsync_dir

    for k in range(n_shards):
        folder, entry = entries[k]
        if k in writer.done_shards:
            continue
        for name in (entry[KIND.array_key], entry["meta"]):
            target = out_dir / name
            target.unlink(missing_ok=True)
            try:
                target.hardlink_to(folder / name)
            except OSError:
                shutil.copyfile(folder / name, target)
        writer.index["shards"].append(dict(entry))
    fsync_dir(out_dir)
    writer.save()
    store = writer.finalize()
    if not keep_parts:
        shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    return store


def dist_env() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun, Lightning, SLURM-style
    RANK/WORLD_SIZE); (0, 1) outside one."""
    import os

    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as err:
        raise DataError(f"RANK/WORLD_SIZE must be integers ({err})") from err


def _forget_foreign_shards(
    writer: FeatureStoreWriter, images: Sequence[Any], coords: np.ndarray
) -> None:
    """After a torn index was rebuilt, keep only the shards made from these very rows (the
    manifest hash the index recorded is gone, so the shards' own metadata is compared)."""
    for shard in list(writer.recovered):
        start, stop = writer.shard_range(shard)
        meta = pq.read_table(writer.out_dir / shard_file_names(shard)[1]).to_pandas()
        same = meta["image"].tolist() == [str(x) for x in images[start:stop]] and np.array_equal(
            meta[["lat", "lon"]].to_numpy(), coords[start:stop]
        )
        if not same:
            writer.forget(shard)


def encode_with(
    module: torch.nn.Module,
    transform: Callable[[Any], torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Callable[[list[Any]], torch.Tensor]:
    """An encode_fn for a backbone module: transform each image, stack, forward without grad.

    `transform` defaults to `module.transform`; device/dtype default to the module's parameters.
    """
    transform = transform if transform is not None else getattr(module, "transform", None)
    if transform is None:
        raise ValueError("give a transform, or a module with a .transform attribute")
    param = next(module.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dtype = dtype or (param.dtype if param is not None else torch.float32)

    @torch.inference_mode()
    def encode(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([transform(img) for img in images])
        if device.type == "cuda" and pixels.device.type == "cpu":  # pinned: an async copy
            pixels = pixels.pin_memory()
        return module(pixels.to(device=device, dtype=dtype, non_blocking=True))

    return encode


# ----------------------------------------------------------------------------------------------
# Reading


class ShardedArray:
    """A read-only [N, dim] view over the shards: indexing reads only the rows asked for."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._store), self._store.dim)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._store.dtype)

    ndim = 2

    def __len__(self) -> int:
        return len(self._store)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key: Any) -> np.ndarray:
        store = self._store
        n = len(store)
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self[rows][(slice(None), *cols)]
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of range for a store of {n} rows")
            k = store._shard_of(np.array([i]))[0]
            return np.array(store._shard_features(k)[i - store._offsets[k]])
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._contiguous(start, max(start, stop))
            key = np.arange(start, stop, step)
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} rows")
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"cannot index features with {idx.dtype} values")
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for a store of {n} rows")
        out = np.empty((idx.size, store.dim), dtype=store.dtype)
        shard_of = store._shard_of(idx)
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            local = idx[sel] - store._offsets[k]
            out[sel] = store._shard_features(int(k))[local]
        return out.reshape((*np.shape(key), store.dim)) if np.ndim(key) > 1 else out

    def _contiguous(self, start: int, stop: int) -> np.ndarray:
        store = self._store
        parts = []
        if stop > start:
            first, last = store._shard_of(np.array([start, stop - 1]))
            for k in range(int(first), int(last) + 1):
                lo = max(start, store._offsets[k]) - store._offsets[k]
                hi = min(stop, store._offsets[k + 1]) - store._offsets[k]
                parts.append(store._shard_features(k)[lo:hi])
        if not parts:
            return np.empty((0, store.dim), dtype=store.dtype)
        return np.concatenate(parts).astype(store.dtype, copy=False)


def _taker(
    f: np.ndarray, c: np.ndarray, i: np.ndarray, dtype: Any
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    def take(sel: np.ndarray) -> dict[str, np.ndarray]:
        feats = f[sel] if dtype is None else f[sel].astype(dtype, copy=False)
        return {"features": feats, "coords": c[sel], "index": i[sel]}

    return take


class FeatureStore(ShardReader):
    """Read a store: `len`, `store[i | slice | indices]` -> features, `.coords`, `.ids`.

    Shard files are opened with np.load(mmap_mode="r"): indexing reads only the rows asked for.
    `iter_batches` / `iterable_dataset` stream whole shards with bounded memory for training.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, KIND)
        counts = np.array([e["count"] for e in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._meta_cache: dict[str, np.ndarray] | None = None

    # -- pickling: worker processes reopen the memory maps and metadata themselves ------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_meta_cache"] = None
        return state

    # -- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, "
            f"dtype={self.dtype}, shards={len(self._shards)})"
        )

    @property
    def dim(self) -> int:
        return int(self.index["dim"]) if self.index.get("dim") is not None else 0

    @property
    def dtype(self) -> str:
        return str(self.index["dtype"])

    @property
    def backbone(self) -> Any:
        return self.index.get("backbone")

    @property
    def features(self) -> ShardedArray:
        return ShardedArray(self)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.features[key]

    # -- shard access -------------------------------------------------------------------------
    def _shard_of(self, idx: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._offsets, idx, side="right") - 1

    def _shard_features(self, k: int) -> np.ndarray:
        mm = self._mmaps.get(k)
        if mm is None:
            path = self.path / self._shards[k]["features"]
            try:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: cannot read feature shard: {err}") from err
            if mm.shape != (self._shards[k]["count"], self.dim):
                raise DataError(
                    f"{path}: shape {mm.shape} does not match the index "
                    f"({self._shards[k]['count']}, {self.dim})"
                )
            self._mmaps[k] = mm
        return mm

    def _read_meta(self, k: int, columns: list[str]) -> pa.Table:
        path = self.path / self._shards[k]["meta"]
        try:
            return pq.read_table(path, columns=columns)
        except Exception as err:
            raise DataError(f"{path}: cannot read shard metadata: {err}") from err

    def _meta(self) -> dict[str, np.ndarray]:
        if self._meta_cache is None:
            cols: dict[str, list[np.ndarray]] = {"lat": [], "lon": [], "position": [], "row": []}
            for k in range(len(self._shards)):
                t = self._read_meta(k, ["lat", "lon", "position", "row", "ok"])
                ok = t.column("ok").to_numpy(zero_copy_only=False)
                for c in cols:
                    cols[c].append(t.column(c).to_numpy(zero_copy_only=False)[ok])
            self._meta_cache = {
                c: (np.concatenate(v) if v else np.empty(0)) for c, v in cols.items()
            }
        return self._meta_cache

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) float64 latitude, longitude of each stored feature row."""
        m = self._meta()
        return np.stack([m["lat"], m["lon"]], axis=1).astype(np.float64)

    @property
    def positions(self) -> np.ndarray:
        """Position of each stored row in the manifest it was extracted from (0-based)."""
        return self._meta()["position"].astype(np.int64)

    @property
    def rows(self) -> np.ndarray:
        """Row number in the manifest file (1-based, header not counted) of each stored row."""
        return self._meta()["row"].astype(np.int64)

    @property
    def ids(self) -> np.ndarray:
        """Image path or id of each stored row (loaded on first use: ~60-100 bytes per row)."""
        parts = []
        for k in range(len(self._shards)):
            t = self._read_meta(k, ["image", "ok"])
            ok = t.column("ok").to_numpy(zero_copy_only=False)
            parts.append(t.column("image").to_numpy(zero_copy_only=False)[ok])
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    @property
    def failures(self) -> pd.DataFrame:
        """Rows whose image could not be loaded or encoded: position, row, image, error."""
        frames = []
        for k, e in enumerate(self._shards):
            if e["failed"]:
                t = self._read_meta(k, ["position", "row", "image", "ok", "error"]).to_pandas()
                frames.append(t[~t["ok"]].drop(columns="ok"))
        if not frames:
            return pd.DataFrame(columns=["position", "row", "image", "error"])
        return pd.concat(frames, ignore_index=True)

    def release(self) -> None:
        """Drop cached memory maps and metadata (frees address space and page-cache pressure)."""
        self._mmaps.clear()
        self._meta_cache = None

    # -- checks -------------------------------------------------------------------------------
    def verify(self) -> None:
        """Re-hash every shard against the index; raise DataError naming the first bad one."""
        for e in self._shards:
            path = self.path / e["features"]
            if not path.is_file():
                raise DataError(f"{path}: shard file missing")
            if sha256_file(path) != e["sha256"]:
                raise DataError(f"{path}: contents do not match the index (corrupt or replaced)")

    def check_compatible(
        self, manifest: Manifest | None = None, backbone: dict[str, Any] | str | None = None
    ) -> None:
        """Raise DataError if the store was built from other images/coordinates or backbone."""
        if manifest is not None and self.manifest_hash not in (None, manifest.content_hash()):
            raise DataError(
                f"{self.path}: features were extracted from a different manifest "
                f"(hash {self.manifest_hash[:12]}..., this one {manifest.content_hash()[:12]}...); "
                "re-extract or point at the matching store"
            )
        if backbone is not None and self.backbone not in (None, backbone):
            raise DataError(
                f"{self.path}: features come from backbone {self.backbone!r}, not {backbone!r}"
            )

    def info(self) -> dict[str, Any]:
        size = sum((self.path / e["features"]).stat().st_size for e in self._shards)
        return {
            "path": str(self.path),
            "rows": len(self),
            "failed": self.n_failed,
            "dim": self.dim,
            "dtype": self.dtype,
            "shards": len(self._shards),
            "shard_size": self.index.get("shard_size"),
            "complete": self.complete,
            "bytes": int(size),
            "backbone": self.backbone,
            "manifest_hash": self.manifest_hash,
            "source": self.index.get("source"),
        }

    # -- streaming ----------------------------------------------------------------------------
    def iter_batches(
        self,
        batch_size: int = 1024,
        *,
        shuffle: bool = False,
        seed: int = 0,
        buffer_shards: int = 2,
        drop_last: bool = False,
        dtype: Any = None,
        shards: Sequence[int] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield {"features", "coords", "index"} batches, reading `buffer_shards` shards at a time.

        Memory stays at about buffer_shards x shard bytes whatever the store size: shards are
        read whole (sequential IO) and dropped after use. With shuffle, shard order and rows
        within each buffer of shards are permuted (a block shuffle; use more buffer_shards or
        smaller shards for more mixing). `index` is the store row of each feature. Features keep
        the stored dtype unless `dtype` is given (converting float16 on the GPU is cheaper).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        order = list(range(len(self._shards))) if shards is None else list(shards)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(order)
        step = max(1, buffer_shards)
        left: dict[str, np.ndarray] | None = None  # a short batch carried into the next group
        for g in range(0, len(order), step):
            feats, coords, index = [], [], []
            for k in order[g : g + step]:
                feats.append(np.load(self.path / self._shards[k]["features"], allow_pickle=False))
                t = self._read_meta(k, ["lat", "lon", "ok"])
                ok = t.column("ok").to_numpy(zero_copy_only=False)
                lat = t.column("lat").to_numpy(zero_copy_only=False)[ok]
                lon = t.column("lon").to_numpy(zero_copy_only=False)[ok]
                coords.append(np.stack([lat, lon], axis=1))
                index.append(np.arange(self._offsets[k], self._offsets[k + 1], dtype=np.int64))
            f = feats[0] if len(feats) == 1 else np.concatenate(feats)
            c, i = np.concatenate(coords), np.concatenate(index)
            del feats
            rows = len(i)
            perm = rng.permutation(rows) if shuffle else None

            def pick(a: int, b: int, perm: np.ndarray | None = perm, rows: int = rows) -> Any:
                return perm[a:b] if perm is not None else slice(a, min(b, rows))

            take = _taker(f, c, i, dtype)
            pos = 0
            if left is not None:
                need = batch_size - len(left["index"])
                new = take(pick(0, need))
                pos = need
                left = {key: np.concatenate([left[key], new[key]]) for key in left}
                if len(left["index"]) < batch_size:
                    continue
                yield left
                left = None
            while pos < rows:
                batch = take(pick(pos, pos + batch_size))
                pos += batch_size
                if len(batch["index"]) == batch_size:
                    yield batch
                else:
                    left = batch
            del f, c, i, take
        if left is not None and len(left["index"]) and not drop_last:
            yield left

    def torch_dataset(self, *, dtype: torch.dtype = torch.float32) -> FeatureDataset:
        return FeatureDataset(self, dtype=dtype)

    def iterable_dataset(self, batch_size: int, **kwargs: Any) -> FeatureIterableDataset:
        return FeatureIterableDataset(self, batch_size, **kwargs)

    # -- construction from arrays -------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        features: np.ndarray | str | Path,
        coords: np.ndarray,
        out_dir: str | Path,
        *,
        ids: Sequence[str] | None = None,
        rows: Sequence[int] | None = None,
        dtype: str | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        backbone: dict[str, Any] | str | None = None,
        overwrite: bool = False,
        progress: bool = False,
    ) -> FeatureStore:
        """Store an existing [N, dim] feature array (or .npy path, read by memory map) with its
        (N, 2) coordinates. dtype defaults to the array's (float16/float32), else float32."""
        from geoalign.geo.coords import as_latlon_array

        name = str(features) if isinstance(features, (str, Path)) else "features"
        if isinstance(features, (str, Path)):
            try:
                features = np.load(features, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{name}: cannot read as a .npy array: {err}") from err
        if features.ndim != 2:
            raise DataError(f"{name}: expected a 2-D [rows, dim] array, got shape {features.shape}")
        coords = as_latlon_array(coords, source="coordinates")
        n = len(features)
        if len(coords) != n:
            raise DataError(f"{name} has {n} rows but there are {len(coords)} coordinates")
        if ids is not None and len(ids) != n:
            raise DataError(f"{name} has {n} rows but there are {len(ids)} ids")
        if dtype is None:
            dtype = features.dtype.name if features.dtype.name in DTYPES else "float32"
        ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
        writer = FeatureStoreWriter(
            out_dir,
            int(features.shape[1]),
            dtype,
            shard_size,
            total=n,
            backbone=backbone,
            manifest_hash=content_hash(ids, coords),
            source=name,
            overwrite=overwrite,
        )
        with progress_bar(
            progress, n, writer._next_position, f"import -> {writer.out_dir}"
        ) as advance:
            step = writer.shard_size
            for start in range(writer._next_position, n, step):
                chunk = np.asarray(features[start : start + step])
                with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
                    cast = chunk.astype(DTYPES[writer.dtype])
                bad = ~np.isfinite(cast).all(axis=1)
                if bad.any():
                    i = start + int(np.flatnonzero(bad)[0])
                    raise DataError(
                        f"{name}: row {i} (0-based) has non-finite values in {writer.dtype} "
                        f"({int(bad.sum())} such rows in rows {start}..{start + len(chunk) - 1})"
                    )
                writer.add(
                    cast,
                    coords[start : start + step],
                    ids[start : start + step],
                    rows[start : start + step] if rows is not None else None,
                )
                advance(len(chunk))
        return writer.finalize()


def import_features(
    npy_path: str | Path,
    coords_path: str | Path,
    out_dir: str | Path,
    *,
    columns: dict[str, str] | None = None,
    dtype: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    backbone: dict[str, Any] | str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> FeatureStore:
    """Turn a plain N x D .npy plus a coordinates table (lat/lon, optional image/id column, one
    row per feature row, same order) into a feature store. Bad coordinates are refused by row."""
    frame = read_table(coords_path, string_columns=None)
    manifest = Manifest.from_frame(frame, columns=columns, source=coords_path, require_image=False)
    report = manifest.report
    assert report is not None
    coord_errors = [
        i for i in report.errors if i.reason not in {"duplicate_image", "duplicate_row"}
    ]
    if coord_errors:
        raise DataError(
            report.describe() + "\nfix the coordinates; every feature row needs a valid location"
        )
    return FeatureStore.from_arrays(
        npy_path,
        manifest.coords(),
        out_dir,
        ids=list(manifest.images),
        rows=manifest.rows,
        dtype=dtype,
        shard_size=shard_size,
        backbone=backbone,
        overwrite=overwrite,
        progress=progress,
    )


# ----------------------------------------------------------------------------------------------
# torch datasets


class FeatureDataset(Dataset):
    """Map-style dataset over a store (random access through the memory maps).

    Items: {"features": [dim] tensor, "coords": [2] float32 lat/lon, "index": store row}.
    """

    def __init__(self, store: FeatureStore | str | Path, *, dtype: torch.dtype = torch.float32):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.dtype = dtype
        self._coords = torch.from_numpy(self.store.coords.astype(np.float32))

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        feats = torch.from_numpy(self.store.features[int(i)].astype(np.float32)).to(self.dtype)
        return {"features": feats, "coords": self._coords[int(i)], "index": torch.tensor(int(i))}


class FeatureIterableDataset(IterableDataset):
    """Streams batches shard by shard in bounded memory; use with DataLoader(batch_size=None).

    Shards are split across DataLoader workers and distributed ranks (rank/world_size default to
    torch.distributed when initialised). Call `set_epoch(e)` each epoch to reshuffle.
    dtype=None keeps the stored dtype: converting float16 after moving to the GPU is several
    times faster than on the CPU (which manages ~100-200k rows/s of 768-d features).
    Ranks may receive different numbers of rows when shards do not divide evenly.
    """

    def __init__(
        self,
        store: FeatureStore | str | Path,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 2,
        drop_last: bool = False,
        dtype: torch.dtype | None = torch.float32,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_shards = buffer_shards
        self.drop_last = drop_last
        self.dtype = dtype
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = (
            world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        order = np.arange(self.store.num_shards)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        mine = [int(k) for k in order[slot::slots]]
        for batch in self.store.iter_batches(
            self.batch_size,
            shuffle=self.shuffle,
            seed=int(np.random.SeedSequence([self.seed, self.epoch, slot]).generate_state(1)[0]),
            buffer_shards=self.buffer_shards,
            drop_last=self.drop_last,
            shards=mine,
        ):
            feats = torch.from_numpy(batch["features"])
            yield {
                "features": feats if self.dtype is None else feats.to(self.dtype),
                "coords": torch.from_numpy(batch["coords"].astype(np.float32)),
                "index": torch.from_numpy(batch["index"]),
            }


def copy_store(src: str | Path, dst: str | Path) -> Path:
    """Copy a store folder (index last, so a partial copy is never mistaken for a store)."""
    src, dst = Path(src), Path(dst)
    index = read_index(src, KIND)
    dst.mkdir(parents=True, exist_ok=True)
    for e in index["shards"]:
        shutil.copy2(src / e["features"], dst / e["features"])
        shutil.copy2(src / e["meta"], dst / e["meta"])
    shutil.copy2(src / INDEX_NAME, dst / INDEX_NAME)
    return dst
