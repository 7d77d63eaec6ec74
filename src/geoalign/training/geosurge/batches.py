"""What every GeoSURGE batch source hands the trainer: the batch type, the data bundle, and the
train / held-out split. Below `data` (features) and `photos` (photos), which both build on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from geoalign.errors import DataError
from geoalign.training.data import fraction_mask
from geoalign.training.geosurge.config import GeoSurgeTrainConfig

Batch = dict[str, Tensor]


@dataclass
class GeoSurgeData:
    train: Any  # a BatchSource
    val: Any  # has iter_all(batch_size, rank, world)
    train_coords: np.ndarray
    feature_dim: int | None
    backbone: Any  # the backbone module for image training, else None


def split_rows(n: int, cfg: GeoSurgeTrainConfig) -> tuple[np.ndarray, np.ndarray]:
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
