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

import numpy as np

from geoalign.data.feature_rows import SCENE_PREFIX, FeatureRows, load_feature_rows
from geoalign.errors import DataError

FeatureSet = FeatureRows  # the analyses' name for labelled feature rows (one loader of them)


def load_feature_set(
    features: str | None = None,
    *,
    benchmark: str | None = None,
    model_features: str | None = None,
) -> FeatureRows:
    """Features + coordinates from a store, an .npz, scene labels, or a benchmark (see module doc);
    ten-crop rows are read as their mean crop."""
    from geoalign.data.scene_labels import SCENE_LABELS

    if features:
        return load_feature_rows(features).mean_crops()
    if benchmark is None:
        raise DataError("give --features (a feature store or .npz) or --benchmark")
    if model_features == SCENE_LABELS:
        return load_feature_rows(f"{SCENE_PREFIX}{benchmark}")
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
    """The model's predicted coordinates [N, 2]: the most probable gallery location, ranked by
    `geoalign.inference.Geolocator` like every prediction (gallery embeddings cached on disk)."""
    import torch
    import torch.nn.functional as F

    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator

    geo = Geolocator(model, gallery=load_gallery(gallery), progress=progress)
    idx, _ = geo.topk(F.normalize(torch.as_tensor(image_emb).float(), dim=-1), 1)
    return geo.coordinates_of(idx)[:, 0]
