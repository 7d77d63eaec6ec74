"""Labelled feature rows, however they are held: the one loader that evaluation, interpretation,
calibration and training read features with coordinates through.

A spec is one of
- a feature store folder (`geoalign features extract` output): its rows, coordinates and ids
  (a `--ten-crop` store gives [N, 10, D]; a store of augmented training views is refused);
- ``scene-labels:<benchmark or CSV>``: the 387-d Places365 scene-label descriptors of the packaged
  benchmark label files (the offline quickstart's "features");
- an ``.npz`` with `features` [N, D] (or [N, crops, D]) and `coords` [N, 2] (and optionally `ids`).
`max_rows` draws a fixed random subset (sorted, seeded) without reading the other rows of a store.

`load_feature_rows` gives rows in memory. `open_feature_rows` opens a store without reading it
(`StoreRows`: training streams it in shards, so a 4.7M-row store never sits in memory; `take` /
`sample` read only the rows asked for) and reads the other kinds as `load_feature_rows` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.data.scene_labels import SCENE_LABELS, load_scene_label_set
from geoalign.errors import DataError
from geoalign.geo.coords import as_latlon_array

SCENE_PREFIX = "scene-labels:"


@dataclass
class FeatureRows:
    features: np.ndarray  # [N, D] or [N, crops, D] float32
    latlon: np.ndarray  # [N, 2] float64
    ids: np.ndarray  # [N] str
    description: str  # for reports: where the rows came from
    backbone: str | None = None  # what made the features (a backbone spec or SCENE_LABELS)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def source(self) -> str:
        return self.description

    @classmethod
    def from_arrays(
        cls, features: Any, coords: Any, description: str = "the arrays passed in"
    ) -> FeatureRows:
        """Rows already in memory (features [N, D] or [N, crops, D], coordinates [N, 2]), as
        given: the coordinates are the caller's (training on in-memory arrays does not check them)."""
        feats = np.asarray(features, dtype=np.float32)
        latlon = np.asarray(coords, dtype=np.float64)
        if len(feats) != len(latlon):
            raise DataError(
                f"{description}: {len(feats)} feature rows but {len(latlon)} coordinates"
            )
        return cls(feats, latlon, np.arange(len(feats)).astype(str), description)

    def take(self, rows: np.ndarray) -> FeatureRows:
        return FeatureRows(
            self.features[rows], self.latlon[rows], self.ids[rows], self.description, self.backbone
        )

    def sample(self, n: int | None, seed: int = 0) -> FeatureRows:
        """A fixed random subset of n rows (all rows when n is None or >= N), in original order."""
        return self.take(sample_rows(len(self), n, seed))

    def mean_crops(self) -> FeatureRows:
        """[N, crops, D] features as their mean crop (analyses that read one vector per photo)."""
        if self.features.ndim != 3:
            return self
        return FeatureRows(
            self.features.mean(axis=1), self.latlon, self.ids, self.description, self.backbone
        )


def sample_rows(n: int, max_rows: int | None, seed: int = 0) -> np.ndarray:
    """Row numbers of a fixed random subset of at most `max_rows` (all rows, in order, when None)."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


class StoreRows:
    """A feature store's labelled rows, opened but not read: training streams `store` in shards;
    `take` and `sample` read only the rows asked for (ids too, one shard's metadata at a time)."""

    def __init__(self, path: str | Path, *, training_views: bool = False) -> None:
        from geoalign.data.feature_store import FeatureStore

        store = FeatureStore(path)
        if not training_views and store.view_kind not in (None, "ten-crop"):
            raise DataError(
                f"{path}: this store holds {store.views} {store.view_kind} training views per "
                "image, not query features; use a single-view or a --ten-crop store"
            )
        self.store = store
        self.path = Path(path)
        self.backbone = store.backbone if isinstance(store.backbone, str) else None

    def __len__(self) -> int:
        return len(self.store)

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def features(self) -> Any:
        """The store's rows as a lazy [N, D] (or [N, views, D]) array: indexing reads them."""
        return self.store.features

    @property
    def latlon(self) -> np.ndarray:
        return self.store.coords

    @property
    def description(self) -> str:
        return f"feature store {self.path} ({len(self):,} rows, backbone {self.store.backbone})"

    def take(self, rows: np.ndarray, description: str | None = None) -> FeatureRows:
        """The rows numbered `rows` (sorted), read into memory."""
        rows = np.asarray(rows, dtype=np.int64)
        feats = np.asarray(self.store.features[rows], dtype=np.float32)
        what = description or (
            f"feature store {self.path} ({len(rows):,} of {len(self):,} rows, "
            f"backbone {self.store.backbone})"
        )
        return FeatureRows(feats, self.latlon[rows], self.store.ids_at(rows), what, self.backbone)

    def sample(self, n: int | None, seed: int = 0) -> FeatureRows:
        """A fixed random subset of n rows (all rows when n is None or >= N), in store order."""
        return self.take(sample_rows(len(self), n, seed))


def _scene_labels(name: str, max_rows: int | None, seed: int) -> FeatureRows:
    feats, latlon, ids = load_scene_label_set(name)
    rows = sample_rows(len(feats), max_rows, seed)
    return FeatureRows(
        feats[rows].astype(np.float32),
        latlon[rows],
        ids.astype(str)[rows],
        f"scene labels of {name}",
        SCENE_LABELS,
    )


def _npz(path: Path, max_rows: int | None, seed: int) -> FeatureRows:
    with np.load(path, allow_pickle=False) as data:
        missing = {"features", "coords"} - set(data.files)
        if missing:
            raise DataError(f"{path}: arrays {sorted(missing)} missing (have {data.files})")
        feats = np.asarray(data["features"], dtype=np.float32)
        coords = as_latlon_array(data["coords"], source=f"{path} coords")
        ids = data["ids"].astype(str) if "ids" in data.files else np.arange(len(feats)).astype(str)
    if len(feats) != len(coords):
        raise DataError(f"{path}: {len(feats)} feature rows but {len(coords)} coordinates")
    rows = sample_rows(len(feats), max_rows, seed)
    return FeatureRows(feats[rows], coords[rows], ids[rows], f"{path} ({len(rows):,} rows)")


def open_feature_rows(
    spec: str,
    *,
    max_rows: int | None = None,
    seed: int = 0,
    training_views: bool = False,
    store_only: bool = False,
) -> FeatureRows | StoreRows:
    """A store opened, not read (`StoreRows`; max_rows is for its `sample`), or the rows of scene
    labels or an .npz in memory (at most max_rows of them). `training_views`: accept a store of
    augmented training views (training reads them; queries are one vector per photo).
    `store_only`: `spec` must be a store folder (a config's `data.source: store`)."""
    if store_only:
        return StoreRows(Path(spec).expanduser(), training_views=training_views)
    if spec.startswith(SCENE_PREFIX):
        return _scene_labels(spec[len(SCENE_PREFIX) :], max_rows, seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        return StoreRows(path, training_views=training_views)
    if path.suffix.lower() == ".npz" and path.is_file():
        return _npz(path, max_rows, seed)
    raise DataError(
        f"{spec}: expected a feature store folder, an .npz with `features` and `coords`, or "
        f"{SCENE_PREFIX}<benchmark or CSV file>"
    )


def load_feature_rows(
    spec: str, *, max_rows: int | None = None, seed: int = 0, training_views: bool = False
) -> FeatureRows:
    """Features with coordinates from a store folder, scene labels or an .npz (see module doc),
    in memory."""
    rows = open_feature_rows(spec, max_rows=max_rows, seed=seed, training_views=training_views)
    return rows.sample(max_rows, seed) if isinstance(rows, StoreRows) else rows


def data_source_spec(source: str, path: str | None) -> str | None:
    """The loader spec of a training config's `data.source` and `data.path` when they name
    labelled features ("store", "scene-labels": yfcc26k unless a path is given); None for photos
    and in-memory arrays."""
    if source == "scene-labels":
        return f"{SCENE_PREFIX}{path or 'yfcc26k'}"
    if source == "store" and path:
        return str(path)
    return None
