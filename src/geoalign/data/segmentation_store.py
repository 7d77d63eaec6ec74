"""Segmentation store: one uint8 ADE20K label map per manifest row, on disk in shards.

GeoSURGE's fusion module reads a segmentation map aligned pixel for pixel with what the backbone
sees. We therefore segment the backbone's own crop: each photo is resized (shortest side) and centre
cropped exactly as the backbone's preprocessing does, that uint8 crop goes to the segmenter, and the
map is stored at the crop's size (336x336 for CLIP ViT-L/14-336). Training reads the same crop
pixels (normalised) and this map; `geoalign.inference.Geolocator` segments the same crop at prediction time.

Same crash-safety as the feature store (both use `geoalign.data.shards`): shard k holds manifest
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

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from geoalign.data.manifest import Manifest
from geoalign.data.shards import (
    ShardReader,
    ShardWriter,
    StoreKind,
    meta_schema,
    progress_bar,
    recording_errors,
    thread_map,
)
from geoalign.data.transforms import FloorCenterCrop, PreprocessConfig
from geoalign.errors import DataError

FORMAT = "geoalign-segmentation-store"
FORMAT_VERSION = 1
KIND = StoreKind(FORMAT, FORMAT_VERSION, label="segmentation store", array_key="maps")
DEFAULT_SHARD_SIZE = 2048
NO_LABEL = 255
_META_SCHEMA = meta_schema()


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


class SegmentationStoreWriter(ShardWriter):
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
        settings = {
            "size": int(size),
            "shard_size": int(shard_size),
            "total": int(total),
            "segmenter": segmenter,
            "geometry": geometry,
            "manifest_hash": manifest_hash,
        }
        super().__init__(out_dir, KIND, settings, source=source, overwrite=overwrite)

    @property
    def size(self) -> int:
        return int(self.index["size"])

    @property
    def total(self) -> int:
        return int(self.index["total"])

    def _recover_fields(
        self, shard: int, array: np.ndarray, meta: pa.Table
    ) -> dict[str, Any] | None:
        """A shard on disk is taken back only if it holds this store's map size and rows."""
        fields = super()._recover_fields(shard, array, meta)
        if fields is None or array.dtype != np.uint8:
            return None
        size = int(self.index["size"])
        return fields if array.shape == (fields["stop"] - fields["start"], size, size) else None

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
        n_ok = int(np.asarray(meta["ok"], dtype=bool).sum())
        self.record_shard(
            shard, maps, table, start=start, stop=stop, failed=int(stop - start - n_ok)
        )

    def finalize(self) -> SegmentationStore:
        covered = self.covered
        if covered != self.total:
            raise DataError(f"{self.out_dir}: shards cover {covered} of {self.total} rows")
        self.mark_complete()
        return SegmentationStore(self.out_dir)


class SegmentationStore(ShardReader):
    """Read a store: `store[i]` -> [S, S] uint8, `store.maps(positions)` -> [k, S, S], `.ok`."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, KIND)
        self._by_shard = {int(e["shard"]): e for e in self._shards}

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
    def segmenter(self) -> dict[str, Any] | None:
        return self.index.get("segmenter")

    @property
    def geometry(self) -> dict[str, Any] | None:
        return self.index.get("geometry")

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
    for shard in list(writer.recovered):  # a rebuilt index: keep only shards of these images
        start, stop = writer.shard_range(shard)
        meta = pq.read_table(writer.out_dir / f"shard-{shard:05d}.parquet", columns=["image"])
        if meta.column("image").to_pylist() != [str(x) for x in images[start:stop]]:
            writer.forget(shard)
    todo, done = writer.pending()
    load = recording_errors(lambda path: transform(load_image(path)))
    with (
        thread_map(num_workers) as pmap,
        progress_bar(
            progress, len(manifest), done, f"segmentations -> {writer.out_dir}"
        ) as advance,
    ):
        for shard in todo:
            start, stop = writer.shard_range(shard)
            maps = np.full((stop - start, size, size), NO_LABEL, dtype=np.uint8)
            ok = np.zeros(stop - start, dtype=bool)
            errors = [""] * (stop - start)
            for b0 in range(start, stop, batch_size):
                b1 = min(b0 + batch_size, stop)
                loaded = list(pmap(load, paths[b0:b1]))
                good = [i for i, (crop, _) in enumerate(loaded) if crop is not None]
                for i, (_, err) in enumerate(loaded):
                    errors[b0 - start + i] = err
                if good:
                    batch = torch.stack([loaded[i][0] for i in good])
                    out = segmenter(batch, size=(size, size)).cpu().numpy()
                    local = np.asarray(good) + (b0 - start)
                    maps[local] = out
                    ok[local] = True
                advance(b1 - b0)
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
    store = writer.finalize()
    if store.n_failed:
        warnings.warn(
            f"{writer.out_dir}: {store.n_failed} of {len(store)} images could not be segmented; "
            "see `geoalign segment info`",
            stacklevel=2,
        )
    return store
