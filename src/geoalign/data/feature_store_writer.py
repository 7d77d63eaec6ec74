"""Feature store writer: shards written crash-safe, the index kept current, a rerun resumes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from geoalign.data.feature_store_format import (
    DEFAULT_SHARD_SIZE,
    DTYPES,
    KIND,
    META_SCHEMA,
    dtype_name,
)
from geoalign.data.feature_store_reader import FeatureStore
from geoalign.data.shards import ShardWriter
from geoalign.errors import DataError


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
        views: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        if views is not None and int(views.get("count", 0)) < 2:
            raise ValueError(f"a multi-view store needs views['count'] >= 2, got {views}")
        self.views: int = int(views["count"]) if views else 1
        self.dtype = dtype_name(dtype)
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
        if views is not None:  # only then: single-view stores keep the index they always had
            settings["views"] = views
        # A setting an earlier run left open (dim before its first shard, say) is taken over.
        super().__init__(
            out_dir, KIND, settings, source=source, overwrite=overwrite, adopt_missing=True
        )
        if self.index.get("views") != views:
            raise DataError(
                f"{self.out_dir}: existing feature store has views={self.index.get('views')!r}, "
                f"this run asks for {views!r}; use a new folder or overwrite it "
                "(overwrite=True, CLI --overwrite)"
            )
        self.dim: int | None = self.index.get("dim")
        shards = self.index["shards"]
        self._next_position = int(shards[-1]["stop"]) if shards else 0

    def _recover_fields(
        self, shard: int, array: np.ndarray, meta: pa.Table
    ) -> dict[str, Any] | None:
        """A shard on disk is taken back only with this store's dtype, dim and row count."""
        fields = super()._recover_fields(shard, array, meta)
        ndim = 2 if self.views == 1 else 3
        if fields is None or array.ndim != ndim or array.dtype != np.dtype(self.dtype):
            return None
        if ndim == 3 and array.shape[1] != self.views:
            return None
        n_ok = fields["stop"] - fields["start"] - fields["failed"]
        if array.shape[0] != n_ok or self.index.get("dim") not in (None, array.shape[-1]):
            return None
        self.index["dim"] = int(array.shape[-1])
        return {**fields, "count": n_ok}

    # -- writing ----------------------------------------------------------------------------
    def write_shard(
        self,
        shard: int,
        features: np.ndarray,
        meta: dict[str, Sequence[Any] | np.ndarray],
    ) -> None:
        """Write shard `shard`: features of the ok rows ([n_ok, dim], or [n_ok, views, dim] in a
        multi-view store), and metadata for every row of the shard.

        meta keys: position, row, image, lat, lon, ok, error (all of the shard's length).
        """
        features = np.asarray(features)
        if self.views == 1 and features.ndim != 2:
            raise ValueError(f"features must be 2-D [rows, dim], got shape {features.shape}")
        if self.views > 1 and (features.ndim != 3 or features.shape[1] != self.views):
            raise ValueError(
                f"features must be [rows, {self.views} views, dim], got shape {features.shape}"
            )
        if self.dim is None:
            self.dim = int(features.shape[-1])
            self.index["dim"] = self.dim
        if features.shape[-1] != self.dim:
            raise DataError(
                f"{self.out_dir}: shard {shard} has features of dim {features.shape[-1]}, "
                f"the store holds dim {self.dim}"
            )
        table = pa.table({name: meta[name] for name in META_SCHEMA.names}, schema=META_SCHEMA)
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
