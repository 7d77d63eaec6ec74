"""Photos in, batches of preprocessed pixels and their queries out, for `Geolocator`.

Apart from the locator so that batching (paths, folders, webdataset shards, ten-crop, skipped
and unreadable inputs) is one job: `predict` and evaluation from photos read the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from geoalign.errors import DataError


def photo_batches(
    backbone: Any,
    images: Iterable[Any] | Any,
    *,
    ten_crop: bool,
    batch_size: int,
    num_workers: int,
    recursive: bool = False,
    skip: set[str] | None = None,
    pin_memory: bool | None = None,
) -> tuple[list[Any], Any]:
    """(input sources, a DataLoader of their preprocessed pixels) for `backbone`'s transform.

    `images` may be a `geoalign.data.wds_images.ShardPhotos` (photos of webdataset shards,
    named by sample key), streamed shard by shard instead of loaded by path. `pin_memory`
    (None: when the backbone runs on CUDA) puts batches in page-locked memory, so their copy to
    the GPU overlaps the forward (the backbone copies with non_blocking=True)."""
    from torch.utils.data import DataLoader

    from geoalign.data.images import ImageInputDataset, collate_images, expand_inputs
    from geoalign.data.transforms import ten_crop_transform
    from geoalign.data.wds_images import ShardPhotos

    if backbone is None:
        raise ValueError("this Geolocator has no backbone: use predict_features")
    transform = ten_crop_transform(backbone.preprocess) if ten_crop else backbone.transform
    if isinstance(images, ShardPhotos):
        sources = images.sources(skip)
        dataset = images.dataset(sources, transform)
    else:
        sources = expand_inputs(images, recursive=recursive)
        if skip:
            sources = [s for s in sources if s.name not in skip]
        dataset = ImageInputDataset(sources, transform)
    if pin_memory is None:
        pin_memory = _device_of(backbone).type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
    )
    return sources, loader


def _device_of(module: Any) -> torch.device:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def embed_batches(
    loader: Iterable[Any],
    embed: Callable[[torch.Tensor], torch.Tensor],
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:
    """(queries [n, E] of the readable photos, their input positions [n], (path, reason) of the
    unreadable ones), in input order; `embed` turns a batch's pixels into queries."""
    queries, kept, failed = [], [], []
    for batch in loader:
        if batch.pixel_values is not None:
            queries.append(embed(batch.pixel_values).cpu())
            kept += batch.indices
        failed += [(e.path, e.reason) for e in batch.errors]
        if on_batch is not None:
            on_batch(len(batch.indices) + len(batch.errors))
    if not queries:
        first = "; ".join(f"{p}: {r}" for p, r in failed[:3])
        raise DataError(f"no photo could be read ({first})")
    return torch.cat(queries), np.asarray(kept, dtype=np.int64), failed
