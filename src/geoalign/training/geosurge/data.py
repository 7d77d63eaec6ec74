"""GeoSURGE training data: features (arrays, scene labels, a store: read through the one loader,
`geoalign.training.data.feature_rows`) or photos (with their segmentation maps, `photos.py`) as
batch sources over the train / held-out split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from geoalign.data.feature_rows import StoreRows
from geoalign.errors import DataError
from geoalign.training.data import ArraySource, StoreSource, feature_rows
from geoalign.training.geosurge.batches import Batch, GeoSurgeData, split_rows
from geoalign.training.geosurge.config import GeoSurgeTrainConfig


class _MaskedStoreSource(StoreSource):
    """A feature store restricted to a row mask (the training split)."""

    def __init__(self, store: Any, mask: np.ndarray, read_rows: int) -> None:
        super().__init__(store, read_rows=read_rows)
        self.mask = mask
        self.n_rows = int(mask.sum())


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


def build_data(cfg: GeoSurgeTrainConfig, arrays: tuple[Any, Any] | None = None) -> GeoSurgeData:
    d, visual = cfg.data, cfg.visual
    if d.source in ("arrays", "scene-labels", "store") and visual != "features":
        raise DataError(
            f"data.source {d.source!r} holds precomputed features: it needs model.visual "
            f"'features' (fusion and backbone fine-tuning read photos: data.source 'images')"
        )
    if d.source == "images" and visual == "features":
        raise DataError("model.visual 'features' trains on precomputed features, not photos")
    rows = feature_rows(d, arrays)
    if isinstance(rows, StoreRows):
        store = rows.store
        if store.views > 1:  # GeoSURGE's recipe has no augmented views (nor ten-crop training)
            raise DataError(
                f"data.path {d.path}: a store of {store.views} {store.view_kind} views per image; "
                "GeoSURGE trains on one view per image: give a single-view feature store"
            )
        coords = rows.latlon
        train, val = split_rows(len(rows), cfg)
        mask = np.zeros(len(rows), dtype=bool)
        mask[train] = True
        return GeoSurgeData(
            _MaskedStoreSource(store, mask, d.read_rows),
            ArrayRows(rows.features[val], coords[val]),
            coords[train],
            rows.dim,
            None,
        )
    if rows is not None:
        feats, coords = rows.features, rows.latlon
        train, val = split_rows(len(coords), cfg)
        return GeoSurgeData(
            ArraySource(feats[train], coords[train]),
            ArrayRows(feats[val], coords[val]),
            coords[train],
            rows.dim,
            None,
        )
    from geoalign.training.geosurge.photos import photo_data

    return photo_data(cfg)
