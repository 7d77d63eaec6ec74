"""Feature stores from existing arrays: a .npy plus coordinates, and copies of a store folder."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.data.feature_store_format import DEFAULT_SHARD_SIZE, DTYPES, KIND
from geoalign.data.feature_store_reader import FeatureStore
from geoalign.data.feature_store_writer import FeatureStoreWriter
from geoalign.data.manifest import Manifest, content_hash
from geoalign.data.shards import INDEX_NAME, progress_bar, read_index
from geoalign.data.tables import read_table
from geoalign.errors import DataError


def store_arrays(
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
    with progress_bar(progress, n, writer._next_position, f"import -> {writer.out_dir}") as advance:
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
    return store_arrays(
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
