"""Where evaluation queries come from: features with ground truth, however they are held.

- labelled feature rows (a feature store, `scene-labels:<benchmark or CSV>`, an .npz), read by
  `geoalign.data.feature_rows.load_feature_rows`, the one loader of them;
- photos: a benchmark folder (`--benchmark NAME --images DIR`) or a manifest, run through the
  frozen backbone the model was trained on, optionally as ten crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoalign.errors import DataError


@dataclass
class Queries:
    features: torch.Tensor  # [N, D] or [N, crops, D]
    truth: np.ndarray  # [N, 2]
    ids: np.ndarray  # [N]
    description: str


def from_rows(rows) -> Queries:
    """Queries from `geoalign.data.feature_rows.FeatureRows`."""
    return Queries(torch.from_numpy(rows.features), rows.latlon, rows.ids, rows.description)


def from_store(path: str | Path, *, max_rows: int | None = None, seed: int = 0) -> Queries:
    return resolve(str(path), max_rows=max_rows, seed=seed)


def from_scene_labels(name_or_path: str) -> Queries:
    return resolve(f"scene-labels:{name_or_path}")


def resolve(spec: str, *, max_rows: int | None = None, seed: int = 0) -> Queries:
    """`scene-labels:<name or CSV>`, a feature store folder or an .npz (the one feature-row
    loader, `geoalign.data.feature_rows`)."""
    from geoalign.data.feature_rows import load_feature_rows

    return from_rows(load_feature_rows(spec, max_rows=max_rows, seed=seed))


def from_images(
    manifest: Any,
    backbone_spec: str,
    *,
    ten_crop: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    num_workers: int = 0,
    progress=None,
) -> Queries:
    """Backbone features of a manifest's photos; photos that fail to load are dropped (listed)."""
    from geoalign.data.images import iter_image_batches
    from geoalign.data.transforms import ten_crop_transform
    from geoalign.nn.backbones import load_backbone

    backbone = load_backbone(backbone_spec, device=device, frozen=True)
    transform = ten_crop_transform(backbone.preprocess) if ten_crop else backbone.transform
    paths = [str(p) for p in manifest.paths()]
    coords = manifest.coords()
    feats: list[torch.Tensor] = []
    kept: list[int] = []
    failures: list[str] = []
    with torch.inference_mode():
        for batch in iter_image_batches(
            paths, transform, batch_size=batch_size, num_workers=num_workers
        ):
            failures += [str(e) for e in batch.errors]
            if batch.pixel_values is None:
                continue
            px = batch.pixel_values
            out = backbone(px.flatten(0, 1) if ten_crop else px).float().cpu()
            feats.append(out.reshape(len(batch), 10, -1) if ten_crop else out)
            kept += batch.indices
            if progress is not None:
                progress(len(batch) + len(batch.errors))
    if not feats:
        raise DataError(f"no image could be read; first problems: {failures[:3]}")
    order = np.asarray(kept)
    desc = f"{len(order):,} photos, backbone {backbone_spec}" + (", ten-crop" if ten_crop else "")
    if failures:
        desc += f"; {len(failures)} unreadable photos skipped (first: {failures[0]})"
    return Queries(torch.cat(feats), coords[order], np.asarray(manifest.images)[order], desc)
