"""Feature store reader: rows by memory map, coordinates and ids, checks, streamed batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoalign.data.feature_store_format import KIND
from geoalign.data.manifest import Manifest
from geoalign.data.shards import ShardReader, sha256_file
from geoalign.errors import DataError


class ShardedArray:
    """A read-only [N, dim] (or [N, views, dim]) view over the shards: indexing reads only the
    rows asked for."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._store), *self._store.row_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._store.dtype)

    @property
    def ndim(self) -> int:
        return 1 + len(self._store.row_shape)

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
        out = np.empty((idx.size, *store.row_shape), dtype=store.dtype)
        shard_of = store._shard_of(idx)
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            local = idx[sel] - store._offsets[k]
            out[sel] = store._shard_features(int(k))[local]
        return out.reshape((*np.shape(key), *store.row_shape)) if np.ndim(key) > 1 else out

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
            return np.empty((0, *store.row_shape), dtype=store.dtype)
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
            f"dtype={self.dtype}, shards={len(self._shards)}"
            + (f", views={self.views} {self.view_kind}" if self.views > 1 else "")
            + ")"
        )

    @property
    def dim(self) -> int:
        return int(self.index["dim"]) if self.index.get("dim") is not None else 0

    @property
    def views(self) -> int:
        """Feature vectors per row: 1, or K (ten crops, or K augmented training views)."""
        spec = self.index.get("views")
        return int(spec["count"]) if spec else 1

    @property
    def view_kind(self) -> str | None:
        """What a row's views are: None (one view), "ten-crop" or "simclr" (see feature_store_views)."""
        spec = self.index.get("views")
        return str(spec["kind"]) if spec else None

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row's features: (dim,), or (views, dim) for a multi-view store."""
        return (self.views, self.dim) if self.views > 1 else (self.dim,)

    @property
    def dtype(self) -> str:
        return str(self.index["dtype"])

    @property
    def backbone(self) -> Any:
        return self.index.get("backbone")

    @property
    def backbone_spec(self) -> str | None:
        """The backbone spec that extracted the rows (`features extract` records a dict with its
        "spec", `features import --backbone` a string), or None when not recorded."""
        b = self.backbone
        spec = b.get("spec") if isinstance(b, dict) else b
        return str(spec) if spec else None

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
            want = (self._shards[k]["count"], *self.row_shape)
            if mm.shape != want:
                raise DataError(f"{path}: shape {mm.shape} does not match the index {want}")
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

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """Ids (as str) of the stored rows numbered `rows`, reading only their shards' metadata,
        one shard at a time (a sample of a large store without holding every id)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty(len(rows), dtype=object)
        shard_of = self._shard_of(rows)
        for k in np.unique(shard_of):
            t = self._read_meta(int(k), ["image", "ok"])
            ok = t.column("ok").to_numpy(zero_copy_only=False)
            images = t.column("image").to_numpy(zero_copy_only=False)[ok]
            sel = np.flatnonzero(shard_of == k)
            out[sel] = images[rows[sel] - self._offsets[k]]
        return out.astype(str)

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
            **({"views": self.views, "view_kind": self.view_kind} if self.views > 1 else {}),
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
