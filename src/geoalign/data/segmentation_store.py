"""Segmentation store: one uint8 ADE20K label map per manifest row, on disk in shards.

GeoSURGE's fusion module reads a segmentation map aligned pixel for pixel with what the backbone
sees. We therefore segment the backbone's own crop: each photo is resized (shortest side) and centre
cropped exactly as the backbone's preprocessing does, that uint8 crop goes to the segmenter, and the
map is stored at the crop's size (336x336 for CLIP ViT-L/14-336). Training reads the same crop
pixels (normalised) and this map; `GeoSurgeLocator` segments the same crop at prediction time.

Same crash-safety as the feature store (`geoalign.data.feature_store`): shard k holds manifest
positions [k*S, (k+1)*S), is written to a temporary file and renamed into place, and index.json
is rewritten after each shard; a rerun redoes only missing shards. Unlike the feature store every
manifest row keeps its slot (rows whose image failed to load hold 255 = "no label" and ok=False),
so position i of the manifest is row i of the store.

Size: S*S bytes per photo, e.g. 113 KB at 336x336 (MP-16's 4.7M photos: about 530 GB).

Layout of a store folder:
    index.json           format, size, shard size, total, segmenter, geometry, manifest hash, shards
    shard-00000.npy      uint8 [rows of the shard, S, S]
    shard-00000.parquet  position, row, image, ok, error
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from geoalign import __version__

# The feature store's atomic-write and progress helpers are reused so both stores fail and resume
# the same way.
from geoalign.data.feature_store import _atomic_write, _error_text, _fsync_dir, _progress, _sha256
from geoalign.data.manifest import Manifest
from geoalign.data.transforms import FloorCenterCrop, PreprocessConfig
from geoalign.errors import DataError

FORMAT = "geoalign-segmentation-store"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
DEFAULT_SHARD_SIZE = 2048
NO_LABEL = 255
_META_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("row", pa.int64()),
        ("image", pa.string()),
        ("ok", pa.bool_()),
        ("error", pa.string()),
    ]
)


def crop_transform(preprocess: PreprocessConfig) -> Callable[[Any], torch.Tensor]:
    """RGB PIL image / uint8 tensor -> uint8 [3, S, S]: the backbone's resize and centre crop,
    without its normalisation (`normalize` finishes the backbone transform)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(
                preprocess.shortest_side,
                interpolation=preprocess.interpolation_mode,
                antialias=True,
            ),
            FloorCenterCrop(preprocess.image_size),
        ]
    )


def normalize(crops: torch.Tensor, preprocess: PreprocessConfig) -> torch.Tensor:
    """uint8 crops [..., 3, S, S] -> the backbone's float32 pixel values."""
    mean = torch.tensor(preprocess.mean, device=crops.device).view(3, 1, 1)
    std = torch.tensor(preprocess.std, device=crops.device).view(3, 1, 1)
    return (crops.float() / 255.0 - mean) / std


def denormalize(pixels: torch.Tensor, preprocess: PreprocessConfig) -> torch.Tensor:
    """Backbone pixel values [..., 3, S, S] -> RGB in [0, 1] (what the segmenter reads)."""
    mean = torch.tensor(preprocess.mean, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(preprocess.std, device=pixels.device).view(3, 1, 1)
    return (pixels.float() * std + mean).clamp(0.0, 1.0)


def geometry(preprocess: PreprocessConfig) -> dict[str, Any]:
    return {
        "image_size": preprocess.image_size,
        "resize_size": preprocess.shortest_side,
        "interpolation": preprocess.interpolation,
    }


def _read_index(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{folder}: not a segmentation store (no {INDEX_NAME})")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: corrupt index: {err}") from err
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: not a geoalign segmentation store index")
    if index.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer geoalign (format {index['version']}); upgrade")
    return index


class SegmentationStoreWriter:
    """Writes shards and keeps index.json current (crash-safe, resumable by shard)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        size: int,
        total: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        segmenter: dict[str, Any] | None = None,
        geometry: dict[str, Any] | None = None,
        manifest_hash: str | None = None,
        source: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        self.out_dir = Path(out_dir)
        wanted = {
            "size": int(size),
            "shard_size": int(shard_size),
            "total": int(total),
            "segmenter": segmenter,
            "geometry": geometry,
            "manifest_hash": manifest_hash,
        }
        if (self.out_dir / INDEX_NAME).exists() and overwrite:
            _remove_store_files(self.out_dir)
        if (self.out_dir / INDEX_NAME).exists():
            self.index = _read_index(self.out_dir)
            for key, value in wanted.items():
                have = self.index.get(key)
                if value is not None and have != value:
                    raise DataError(
                        f"{self.out_dir}: existing segmentation store has {key}={have!r}, this "
                        f"run asks for {value!r}; use a new folder or --overwrite"
                    )
            self._drop_broken_shards()
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.index = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                **wanted,
                "source": source,
                "complete": False,
                "geoalign_version": __version__,
                "shards": [],
            }
        for p in self.out_dir.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink(missing_ok=True)
        self._write_index()

    @property
    def size(self) -> int:
        return int(self.index["size"])

    @property
    def shard_size(self) -> int:
        return int(self.index["shard_size"])

    @property
    def total(self) -> int:
        return int(self.index["total"])

    @property
    def done_shards(self) -> set[int]:
        return {int(e["shard"]) for e in self.index["shards"]}

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.total)

    def _drop_broken_shards(self) -> None:
        kept = []
        for e in self.index["shards"]:
            maps, meta = self.out_dir / e["maps"], self.out_dir / e["meta"]
            if maps.is_file() and meta.is_file() and maps.stat().st_size == e["nbytes"]:
                kept.append(e)
        self.index["shards"] = kept

    def _write_index(self) -> None:
        self.index["shards"].sort(key=lambda e: e["shard"])
        text = json.dumps(self.index, indent=1, sort_keys=True).encode() + b"\n"
        _atomic_write(self.out_dir / INDEX_NAME, lambda fh: fh.write(text))
        _fsync_dir(self.out_dir)

    def write_shard(self, shard: int, maps: np.ndarray, meta: dict[str, Sequence[Any]]) -> None:
        """maps: uint8 [rows of the shard, S, S]; meta: position, row, image, ok, error."""
        start, stop = self.shard_range(shard)
        maps = np.ascontiguousarray(maps, dtype=np.uint8)
        if maps.shape != (stop - start, self.size, self.size):
            raise ValueError(
                f"shard {shard} needs maps of shape {(stop - start, self.size, self.size)}, "
                f"got {maps.shape}"
            )
        table = pa.table({n: meta[n] for n in _META_SCHEMA.names}, schema=_META_SCHEMA)
        maps_name, meta_name = f"shard-{shard:05d}.npy", f"shard-{shard:05d}.parquet"
        _atomic_write(self.out_dir / maps_name, lambda fh: np.save(fh, maps, allow_pickle=False))
        _atomic_write(self.out_dir / meta_name, lambda fh: pq.write_table(table, fh))
        n_ok = int(np.asarray(meta["ok"], dtype=bool).sum())
        entry = {
            "shard": int(shard),
            "maps": maps_name,
            "meta": meta_name,
            "start": start,
            "stop": stop,
            "failed": int(stop - start - n_ok),
            "nbytes": (self.out_dir / maps_name).stat().st_size,
            "sha256": _sha256(self.out_dir / maps_name),
        }
        self.index["shards"] = [e for e in self.index["shards"] if e["shard"] != shard] + [entry]
        self._write_index()

    def finalize(self) -> SegmentationStore:
        covered = sum(e["stop"] - e["start"] for e in self.index["shards"])
        if covered != self.total:
            raise DataError(f"{self.out_dir}: shards cover {covered} of {self.total} rows")
        self.index["complete"] = True
        self._write_index()
        return SegmentationStore(self.out_dir)


def _remove_store_files(folder: Path) -> None:
    """Delete only what a store writes (index and shard files)."""
    (folder / INDEX_NAME).unlink(missing_ok=True)
    for p in folder.glob("shard-*"):
        if p.suffix in {".npy", ".parquet"}:
            p.unlink(missing_ok=True)


class SegmentationStore:
    """Read a store: `store[i]` -> [S, S] uint8, `store.maps(positions)` -> [k, S, S], `.ok`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = _read_index(self.path)
        self._shards = sorted(self.index["shards"], key=lambda e: e["start"])
        self._by_shard = {int(e["shard"]): e for e in self._shards}
        self._mmaps: dict[int, np.ndarray] = {}
        if not self.complete:
            warnings.warn(
                f"{self.path}: segmentation store is incomplete ({len(self._shards)} shards); "
                "rerun the extraction to finish it",
                stacklevel=2,
            )

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        return state

    def __len__(self) -> int:
        return int(self.index["total"])

    def __repr__(self) -> str:
        return f"SegmentationStore({str(self.path)!r}, rows={len(self)}, size={self.size})"

    @property
    def size(self) -> int:
        return int(self.index["size"])

    @property
    def shard_size(self) -> int:
        return int(self.index["shard_size"])

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

    @property
    def segmenter(self) -> dict[str, Any] | None:
        return self.index.get("segmenter")

    @property
    def geometry(self) -> dict[str, Any] | None:
        return self.index.get("geometry")

    @property
    def manifest_hash(self) -> str | None:
        return self.index.get("manifest_hash")

    @property
    def n_failed(self) -> int:
        return int(sum(e["failed"] for e in self._shards))

    def _shard_maps(self, k: int) -> np.ndarray:
        mm = self._mmaps.get(k)
        if mm is None:
            entry = self._by_shard.get(k)
            if entry is None:
                raise DataError(f"{self.path}: shard {k} is missing; rerun the extraction")
            path = self.path / entry["maps"]
            try:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: cannot read segmentation shard: {err}") from err
            want = (entry["stop"] - entry["start"], self.size, self.size)
            if mm.shape != want or mm.dtype != np.uint8:
                raise DataError(f"{path}: shape {mm.shape} {mm.dtype}, index says {want} uint8")
            self._mmaps[k] = mm
        return mm

    def maps(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 [k, S, S] maps of manifest positions (read from the memory-mapped shards)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            bad = int(pos[(pos < 0) | (pos >= len(self))][0])
            raise IndexError(f"{self.path}: position {bad} outside 0..{len(self) - 1}")
        out = np.empty((pos.size, self.size, self.size), dtype=np.uint8)
        shard = pos // self.shard_size
        for k in np.unique(shard):
            sel = np.flatnonzero(shard == k)
            out[sel] = self._shard_maps(int(k))[pos[sel] - int(k) * self.shard_size]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.maps([int(i)])[0]

    def _meta(self, columns: list[str]) -> pd.DataFrame:
        frames = [pq.read_table(self.path / e["meta"], columns=columns) for e in self._shards]
        return pa.concat_tables(frames).to_pandas() if frames else pd.DataFrame(columns=columns)

    @property
    def ok(self) -> np.ndarray:
        """bool [N]: the row's image was read and segmented (False also for missing shards)."""
        out = np.zeros(len(self), dtype=bool)
        meta = self._meta(["position", "ok"])
        out[meta["position"].to_numpy()] = meta["ok"].to_numpy()
        return out

    def failures(self) -> pd.DataFrame:
        meta = self._meta(["position", "row", "image", "ok", "error"])
        return meta[~meta["ok"]].drop(columns="ok").reset_index(drop=True)

    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse a manifest other than the one the maps were made from."""
        if len(manifest) != len(self):
            raise DataError(
                f"{self.path}: the store has {len(self)} rows, the manifest {len(manifest)}"
            )
        if self.manifest_hash and manifest.content_hash() != self.manifest_hash:
            raise DataError(
                f"{self.path}: made from another manifest (hash {self.manifest_hash[:12]}, this "
                f"one {manifest.content_hash()[:12]}); segment this manifest into a new folder"
            )

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rows": len(self),
            "size": self.size,
            "shards": len(self._shards),
            "complete": self.complete,
            "failed": self.n_failed,
            "segmenter": self.segmenter,
            "geometry": self.geometry,
            "manifest_hash": self.manifest_hash,
        }


def extract_segmentations(
    manifest: Manifest,
    segmenter: Any,
    out_dir: str | Path,
    *,
    preprocess: PreprocessConfig,
    batch_size: int = 16,
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_workers: int = 0,
    segmenter_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SegmentationStore:
    """Segment the backbone crop of every manifest image into a store at `out_dir`.

    `segmenter(uint8 [B, 3, S, S]) -> uint8 [B, S, S]` (a `geoalign.nn.segmenters.Segmenter`).
    Unreadable images are recorded per row (ok=False, map of 255) and never stop the run; a rerun
    resumes from the last complete shard. `num_workers` > 0 decodes images in that many threads.
    """
    from geoalign.data.images import load_image

    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    size = preprocess.image_size
    writer = SegmentationStoreWriter(
        out_dir,
        size=size,
        total=len(manifest),
        shard_size=shard_size,
        segmenter=segmenter_info,
        geometry=geometry(preprocess),
        manifest_hash=manifest.content_hash(),
        source=str(manifest.source) if manifest.source else None,
        overwrite=overwrite,
    )
    transform = crop_transform(preprocess)
    paths, images, rows = manifest.paths(), manifest.images, manifest.rows
    n_shards = math.ceil(len(manifest) / writer.shard_size) if len(manifest) else 0
    todo = [k for k in range(n_shards) if k not in writer.done_shards]
    done = len(manifest) - sum(b - a for a, b in map(writer.shard_range, todo))

    def load(path: Path) -> tuple[torch.Tensor | None, str]:
        try:
            return transform(load_image(path)), ""
        except Exception as err:  # any decoder/IO failure is recorded per row, never fatal
            return None, _error_text(err)

    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    bar = _progress(progress, len(manifest), done, f"segmentations -> {writer.out_dir}")
    try:
        for shard in todo:
            start, stop = writer.shard_range(shard)
            maps = np.full((stop - start, size, size), NO_LABEL, dtype=np.uint8)
            ok = np.zeros(stop - start, dtype=bool)
            errors = [""] * (stop - start)
            for b0 in range(start, stop, batch_size):
                b1 = min(b0 + batch_size, stop)
                loaded = list((pool.map if pool else map)(load, paths[b0:b1]))
                good = [i for i, (crop, _) in enumerate(loaded) if crop is not None]
                for i, (_, err) in enumerate(loaded):
                    errors[b0 - start + i] = err
                if good:
                    batch = torch.stack([loaded[i][0] for i in good])
                    out = segmenter(batch, size=(size, size)).cpu().numpy()
                    local = np.asarray(good) + (b0 - start)
                    maps[local] = out
                    ok[local] = True
                if bar is not None:
                    bar[0].advance(bar[1], b1 - b0)
            writer.write_shard(
                shard,
                maps,
                {
                    "position": np.arange(start, stop, dtype=np.int64),
                    "row": rows[start:stop],
                    "image": [str(x) for x in images[start:stop]],
                    "ok": ok,
                    "error": errors,
                },
            )
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar[0].stop()
    store = writer.finalize()
    if store.n_failed:
        warnings.warn(
            f"{writer.out_dir}: {store.n_failed} of {len(store)} images could not be segmented; "
            "see `geoalign segment info`",
            stacklevel=2,
        )
    return store
