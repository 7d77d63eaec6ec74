"""Image features with coordinates for the global analyses, from wherever the user has them.

The analyses (decision rules, activation by error bin, embedding plots, the concept bottleneck) read
backbone features of a labelled image set, never photos directly:

- a feature store folder (`geoalign features extract ...`), or an .npz with `features` and `coords`
  (and optionally `ids`);
- ``scene-labels:<benchmark or csv>``: the Places365 scene-label descriptors of the packaged
  benchmark labels, for models trained on them (the offline quickstart);
- nothing but a benchmark name, when the model reads scene-label descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoalign.errors import DataError

SCENE_PREFIX = "scene-labels:"


@dataclass
class FeatureSet:
    features: np.ndarray  # [N, D] float32
    latlon: np.ndarray  # [N, 2] float64
    ids: np.ndarray  # [N] str
    source: str

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: np.ndarray) -> FeatureSet:
        return FeatureSet(self.features[rows], self.latlon[rows], self.ids[rows], self.source)

    def sample(self, n: int | None, seed: int = 0) -> FeatureSet:
        """A fixed random subset of n rows (all rows when n is None or >= N), in original order."""
        if n is None or n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.take(rows)


def _scene_labels(name: str) -> FeatureSet:
    from geoalign.data.scene_labels import load_scene_label_set

    feats, latlon, ids = load_scene_label_set(name)
    return FeatureSet(feats.astype(np.float32), latlon, ids.astype(str), f"{SCENE_PREFIX}{name}")


def _npz(path: Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as data:
        missing = {"features", "coords"} - set(data.files)
        if missing:
            raise DataError(f"{path}: arrays {sorted(missing)} missing (have {data.files})")
        feats = np.asarray(data["features"], dtype=np.float32)
        coords = np.asarray(data["coords"], dtype=np.float64)
        ids = data["ids"].astype(str) if "ids" in data.files else np.arange(len(feats)).astype(str)
    if feats.ndim == 3:  # [N, crops, D]: the mean crop
        feats = feats.mean(axis=1)
    if len(feats) != len(coords):
        raise DataError(f"{path}: {len(feats)} feature rows but {len(coords)} coordinates")
    return FeatureSet(feats, coords, ids, str(path))


def _store(path: Path) -> FeatureSet:
    from geoalign.data.feature_store import FeatureStore

    store = FeatureStore(path)
    feats = np.asarray(store.features[:], dtype=np.float32)
    return FeatureSet(feats, store.coords, np.asarray(store.ids).astype(str), str(path))


def load_feature_set(
    features: str | None = None,
    *,
    benchmark: str | None = None,
    model_features: str | None = None,
) -> FeatureSet:
    """Features + coordinates from a store, an .npz, scene labels, or a benchmark (see module doc)."""
    from geoalign.data.scene_labels import SCENE_LABELS

    if features:
        if features.startswith(SCENE_PREFIX):
            return _scene_labels(features[len(SCENE_PREFIX) :])
        path = Path(features).expanduser()
        if path.is_dir():
            return _store(path)
        if path.suffix.lower() == ".npz" and path.is_file():
            return _npz(path)
        raise DataError(
            f"--features {features}: expected a feature store folder, an .npz with `features` and "
            f"`coords`, or {SCENE_PREFIX}<benchmark>"
        )
    if benchmark is None:
        raise DataError("give --features (a feature store or .npz) or --benchmark")
    if model_features == SCENE_LABELS:
        return _scene_labels(benchmark)
    raise DataError(
        f"the model reads {model_features or 'backbone'} features: extract the {benchmark} images "
        f"first (`geoalign features extract ...`) and pass the store with --features"
    )


def check_width(fs: FeatureSet, expected: int, what: str) -> None:
    if fs.features.shape[1] != expected:
        raise DataError(
            f"{fs.source}: features are {fs.features.shape[1]}-d but {what} reads {expected}-d "
            "features (features from another backbone?)"
        )


def image_embeddings(model, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Image embeddings x_img [N, d] (unnormalised) of backbone features, batched, float32."""
    import torch

    param = next(model.parameters())
    out = []
    with torch.inference_mode():
        for chunk in torch.as_tensor(features).split(batch_size):
            out.append(model.encode_images(chunk.to(param.device, torch.float32)).float().cpu())
    return torch.cat(out).numpy()


def retrieve_top1(
    model, image_emb: np.ndarray, gallery: str = "geoclip-100k", *, progress=None
) -> np.ndarray:
    """The model's predicted coordinates [N, 2]: the most similar gallery location (GeoCLIP's
    retrieval; gallery embeddings cached on disk per encoder and gallery)."""
    import torch

    from geoalign.data.galleries import load_gallery
    from geoalign.inference.gallery_cache import gallery_embeddings
    from geoalign.inference.search import GallerySearch

    table = load_gallery(gallery)
    latlon = table[["lat", "lon"]].to_numpy(dtype=np.float64)
    emb = gallery_embeddings(model.location_encoder, latlon, progress=progress)
    search = GallerySearch(emb, float(model.scale().detach().exp()))
    idx = search.topk(torch.as_tensor(image_emb), 1).indices[:, 0].numpy()
    return latlon[idx]
