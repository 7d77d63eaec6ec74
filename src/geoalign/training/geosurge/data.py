"""GeoSURGE training data: the train / held-out split, and features or photos (with their
segmentation maps) as batch sources."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geoalign.errors import DataError, GeoalignError
from geoalign.training.data import ArraySource, StoreSource, epoch_seed, fraction_mask
from geoalign.training.geosurge.config import GeoSurgeTrainConfig

Batch = dict[str, Tensor]


class _MaskedStoreSource(StoreSource):
    """A feature store restricted to a row mask (the training split)."""

    def __init__(self, store: Any, mask: np.ndarray, read_rows: int) -> None:
        super().__init__(store, read_rows=read_rows)
        self.mask = mask
        self.n_rows = int(mask.sum())


class _PhotoDataset(torch.utils.data.Dataset):
    """Photo -> backbone pixels (resize + centre crop + normalise), its map, its coordinates."""

    def __init__(
        self,
        paths: list[Path],
        coords: np.ndarray,
        positions: np.ndarray,
        segs: Any,
        preprocess: Any,
    ) -> None:
        from geoalign.data.segmentation_store import crop_transform

        self.paths = paths
        self.coords = torch.tensor(np.asarray(coords), dtype=torch.float32)  # a copy
        self.positions = positions
        self.segs = segs
        self.preprocess = preprocess
        self.crop = crop_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor] | None:
        from geoalign.data.images import load_image
        from geoalign.data.segmentation_store import normalize

        i = int(i)
        try:
            pixels = normalize(self.crop(load_image(self.paths[i])), self.preprocess)
        except Exception:  # an unreadable photo is dropped from its batch, never fatal
            return None
        item = {"pixels": pixels, "coords": self.coords[i]}
        if self.segs is not None:
            item["seg"] = torch.from_numpy(self.segs[int(self.positions[i])])
        return item


def _collate(items: list[dict[str, Tensor] | None]) -> Batch:
    good = [x for x in items if x is not None]
    if not good:
        return {}
    return {k: torch.stack([x[k] for x in good]) for k in good[0]}


class PhotoSource:
    """Photos of a manifest (and their segmentation maps) as a `BatchSource`."""

    def __init__(self, dataset: _PhotoDataset, rows: np.ndarray, num_workers: int) -> None:
        self.dataset = dataset
        self.rows = rows
        self.n_rows = len(rows)
        self.num_workers = num_workers

    def _loader(self, batches: list[list[int]]) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=_collate
        )
        for batch in loader:
            if batch:
                yield batch

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        rng = np.random.default_rng(epoch_seed(seed, epoch))
        perm = self.rows[rng.permutation(self.n_rows)]
        b = batch_size // world
        batches = [
            perm[k * batch_size + rank * b : k * batch_size + (rank + 1) * b].tolist()
            for k in range(skip, self.n_rows // batch_size)
        ]
        return self._loader(batches)

    def iter_all(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        mine = np.array_split(self.rows, world)[rank]
        return self._loader(
            [
                c.tolist()
                for c in np.array_split(mine, max(1, math.ceil(len(mine) / batch_size)))
                if len(c)
            ]
        )


class ArrayRows:
    """Held-out rows in memory: every row once, split over processes (no batch dropped)."""

    def __init__(self, features: np.ndarray, coords: np.ndarray) -> None:
        self.features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.coords = torch.as_tensor(np.asarray(coords), dtype=torch.float32)
        self.n_rows = len(self.coords)

    def iter_all(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        mine = np.array_split(np.arange(self.n_rows), world)[rank]
        for start in range(0, len(mine), batch_size):
            rows = torch.from_numpy(mine[start : start + batch_size])
            yield {"features": self.features[rows], "coords": self.coords[rows]}


@dataclass
class GeoSurgeData:
    train: Any  # a BatchSource
    val: Any  # has iter_all(batch_size, rank, world)
    train_coords: np.ndarray
    feature_dim: int | None
    backbone: Any  # the backbone module for image training, else None


def _split(n: int, cfg: GeoSurgeTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a fixed `val_fraction` of rows, then `fraction` of the rest."""
    d = cfg.data
    val = (
        fraction_mask(n, d.val_fraction, d.split_seed) if d.val_fraction > 0 else np.zeros(n, bool)
    )
    rest = np.flatnonzero(~val)
    keep = rest[fraction_mask(len(rest), d.fraction, d.fraction_seed)]
    if len(np.flatnonzero(val)) == 0:
        raise DataError(f"data.val_fraction {d.val_fraction} leaves no validation row of {n}")
    return keep, np.flatnonzero(val)


def build_data(cfg: GeoSurgeTrainConfig, arrays: tuple[Any, Any] | None = None) -> GeoSurgeData:
    d, visual = cfg.data, cfg.visual
    if d.source in ("arrays", "scene-labels", "store") and visual != "features":
        raise DataError(
            f"data.source {d.source!r} holds precomputed features: it needs model.visual "
            f"'features' (fusion and backbone fine-tuning read photos: data.source 'images')"
        )
    if d.source == "images" and visual == "features":
        raise DataError("model.visual 'features' trains on precomputed features, not photos")
    if d.source in ("arrays", "scene-labels"):
        if d.source == "arrays":
            if arrays is None:
                raise GeoalignError("data.source 'arrays' needs features and coordinates passed in")
            feats, coords = (np.asarray(a) for a in arrays)
        else:
            from geoalign.evaluation.descriptors import load_scene_label_set

            feats, coords, _ = load_scene_label_set(d.path or "yfcc26k")
        train, val = _split(len(coords), cfg)
        return GeoSurgeData(
            ArraySource(feats[train], coords[train]),
            ArrayRows(feats[val], coords[val]),
            np.asarray(coords[train], dtype=np.float64),
            int(feats.shape[-1]),
            None,
        )
    if d.source == "store":
        from geoalign.data.feature_store import FeatureStore

        if not d.path:
            raise DataError("data.path: the feature store folder is required for source 'store'")
        store = FeatureStore(d.path)
        coords = store.coords
        train, val = _split(len(store), cfg)
        mask = np.zeros(len(store), dtype=bool)
        mask[train] = True
        return GeoSurgeData(
            _MaskedStoreSource(store, mask, d.read_rows),
            ArrayRows(store.features[val], coords[val]),
            coords[train],
            store.dim,
            None,
        )
    return _photo_data(cfg)


def _photo_data(cfg: GeoSurgeTrainConfig) -> GeoSurgeData:
    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import SegmentationStore, geometry
    from geoalign.nn.backbones import load_backbone

    d, m = cfg.data, cfg.model
    if not d.path:
        raise DataError("data.path: the manifest is required for source 'images'")
    manifest = load_manifest(d.path, image_root=d.images_root, check_files=True).clean()
    backbone = load_backbone(m.backbone, frozen=True)
    segs = None
    usable = np.ones(len(manifest), dtype=bool)
    if cfg.visual == "fusion":
        if not d.segmentations:
            raise DataError(
                "data.segmentations: semantic fusion needs a segmentation store "
                "(geoalign segment extract MANIFEST --out SEGS)"
            )
        segs = SegmentationStore(d.segmentations)
        segs.check_manifest(manifest)
        if segs.geometry and segs.geometry != geometry(backbone.preprocess):
            raise DataError(
                f"{segs.path}: maps were cut for {segs.geometry}, backbone {m.backbone} "
                f"preprocesses {geometry(backbone.preprocess)}: re-extract with this backbone"
            )
        recorded = (segs.segmenter or {}).get("spec")
        if recorded and recorded != m.segmenter:
            raise DataError(
                f"{segs.path}: maps come from segmenter {recorded!r}, model.segmenter is "
                f"{m.segmenter!r}"
            )
        usable = segs.ok  # photos that could not be read at extraction time are left out
    rows = np.flatnonzero(usable)
    train_local, val_local = _split(len(rows), cfg)
    dataset = _PhotoDataset(
        manifest.paths(), manifest.coords(), np.arange(len(manifest)), segs, backbone.preprocess
    )
    coords = manifest.coords()
    return GeoSurgeData(
        PhotoSource(dataset, rows[train_local], d.num_workers),
        PhotoSource(dataset, rows[val_local], d.num_workers),
        coords[rows[train_local]],
        None,
        backbone,
    )
