"""Feature extraction: encode a manifest's images into a store, shard by shard, resumably."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from geoalign.data.feature_store_format import DEFAULT_SHARD_SIZE, DTYPES
from geoalign.data.feature_store_parts import part_dir, part_dirs, shards_in_other_parts
from geoalign.data.feature_store_reader import FeatureStore
from geoalign.data.feature_store_writer import FeatureStoreWriter
from geoalign.data.manifest import Manifest
from geoalign.data.shards import (
    progress_bar,
    recorded_shard_size,
    recording_errors,
    shard_file_names,
    thread_map,
)
from geoalign.data.wds import ShardManifest
from geoalign.errors import DataError


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach()
        if out.dtype not in (torch.float32, torch.float64):
            out = out.float()
        return out.cpu().numpy()
    return np.asarray(out)


def extract_features(
    manifest: Manifest | ShardManifest,
    encode_fn: Callable[[list[Any]], Any],
    out_dir: str | Path,
    *,
    load_fn: Callable[[Any], Any] | None = None,
    batch_size: int = 64,
    dtype: str = "float16",
    shard_size: int | None = None,
    num_workers: int = 0,
    backbone: dict[str, Any] | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    prepare_fn: Callable[[Any, int], Any] | None = None,
    views: dict[str, Any] | None = None,
) -> FeatureStore | None:
    """Encode every image of `manifest` with `encode_fn` into a feature store at `out_dir`.

    encode_fn(list of loaded images) -> array or tensor [len(list), dim]. load_fn(path) -> image
    (default: geoalign.data.images.load_image, or for a `ShardManifest` -- rows listed from
    webdataset shards -- a `ShardImageLoader`); a load failure, or non-finite features, marks that
    row failed (recorded in the shard metadata) without stopping the run. Exceptions raised by
    encode_fn stop the run; rerunning resumes from the last completed shard and yields the same
    bytes as an uninterrupted run. num_workers > 0 loads images in that many threads.

    prepare_fn(image, manifest position) turns each loaded image into what encode_fn receives
    (e.g. its ten crops, or K augmented views seeded by the position, so that a resumed or
    distributed run makes the same views); it runs in this thread, in row order, and a failure
    marks the row failed like a load failure. views ({"count": K, "kind": ..., ...}, recorded in
    the index; see `geoalign.data.feature_store_views`): encode_fn returns [len(list), K, dim]
    and the store holds K feature vectors per row.
    shard_size=None keeps the size of the store being resumed, else DEFAULT_SHARD_SIZE. If the
    store's index.json is torn, it is rebuilt from the whole shards whose rows are this
    manifest's (images and coordinates compared); the others are redone.

    world_size > 1 (one process per rank, e.g. under torchrun): this rank encodes store shards
    k with k % world_size == rank (and none another rank's part already holds) into its own
    crash-safe part folder `out_dir/parts/part-<rank>`, and returns None; `merge_parts` then
    assembles the one store, byte-identical to a single-process run.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if load_fn is None:
        from geoalign.data.wds import ShardImageLoader, ShardManifest

        if isinstance(manifest, ShardManifest):
            load_fn = ShardImageLoader()
        else:
            from geoalign.data.images import load_image

            load_fn = load_image
    coords = manifest.coords()
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        rows = manifest.rows[bad][:10].tolist()
        raise DataError(
            f"{manifest.source or '<manifest>'}: {int(bad.sum())} rows have invalid coordinates "
            f"(e.g. rows {rows}); clean the manifest first (Manifest.clean)"
        )
    total = len(manifest)
    out_dir = Path(out_dir)
    if shard_size is None:
        recorded = None if overwrite else recorded_shard_size(out_dir)
        if recorded is None and world_size > 1 and not overwrite:
            recorded = next(filter(None, map(recorded_shard_size, part_dirs(out_dir))), None)
        shard_size = recorded or DEFAULT_SHARD_SIZE
    settings = dict(
        total=total,
        backbone=backbone,
        manifest_hash=manifest.content_hash(),
        source=str(manifest.source) if manifest.source else None,
        views=views,
    )
    if world_size > 1:
        writer = FeatureStoreWriter(
            part_dir(out_dir, rank), None, dtype, shard_size, overwrite=overwrite, **settings
        )
    else:
        writer = FeatureStoreWriter(
            out_dir, None, dtype, shard_size, overwrite=overwrite, **settings
        )
    paths = manifest.paths()
    images = manifest.images
    rows = manifest.rows
    forget_foreign_shards(writer, images, coords)
    todo, done_rows = writer.pending(total)
    if world_size > 1:
        elsewhere = shards_in_other_parts(out_dir, rank, writer.index)
        todo = [k for k in todo if k % world_size == rank and k not in elsewhere]
        done_rows = total - sum(b - a for a, b in (writer.shard_range(k, total) for k in todo))
    load = recording_errors(load_fn)
    prepare = recording_errors(lambda item: prepare_fn(*item)) if prepare_fn else None
    n_views = int(views["count"]) if views else 1
    want = f"({{n}}, {n_views}, dim)" if views else "({n}, dim)"
    with (
        thread_map(num_workers) as pmap,
        progress_bar(progress, total, done_rows, f"features -> {writer.out_dir}") as advance,
    ):
        for shard in todo:
            start, stop = writer.shard_range(shard, total)
            ok = np.zeros(stop - start, dtype=bool)
            errors = [""] * (stop - start)
            chunks: list[np.ndarray] = []
            for b0 in range(start, stop, batch_size):
                b1 = min(b0 + batch_size, stop)
                batch_paths = paths[b0:b1]
                loaded = list(pmap(load, batch_paths))
                if prepare is not None:
                    loaded = [
                        prepare((item, b0 + i)) if not err else (item, err)
                        for i, (item, err) in enumerate(loaded)
                    ]
                good = [i for i, (_, err) in enumerate(loaded) if not err]
                for i, (_, err) in enumerate(loaded):
                    if err:
                        errors[b0 - start + i] = err
                if good:
                    feats = _to_numpy(encode_fn([loaded[i][0] for i in good]))
                    shape_ok = feats.ndim == (3 if views else 2) and feats.shape[0] == len(good)
                    if not shape_ok or (views and feats.shape[1] != n_views):
                        raise ValueError(
                            f"encode_fn returned shape {tuple(feats.shape)} for a batch of "
                            f"{len(good)} images; expected {want.format(n=len(good))}"
                        )
                    with np.errstate(over="ignore"):  # overflow -> inf -> row marked failed
                        cast = feats.astype(DTYPES[writer.dtype])
                    finite = np.isfinite(cast.reshape(len(cast), -1)).all(axis=1)
                    for j, i in enumerate(good):
                        if finite[j]:
                            ok[b0 - start + i] = True
                        else:
                            errors[b0 - start + i] = f"non-finite features in {writer.dtype}"
                    chunks.append(cast[finite])
                advance(b1 - b0)
            dim = writer.dim or (chunks[0].shape[-1] if chunks else None)
            if dim is None:
                raise DataError(
                    f"{writer.out_dir}: no image in shard {shard} could be encoded, so the "
                    f"feature size is unknown (first error: {errors[0]})"
                )
            empty = (0, n_views, dim) if views else (0, dim)
            feats = np.concatenate(chunks) if chunks else np.zeros(empty, writer.dtype)
            writer.write_shard(
                shard,
                feats,
                {
                    "position": np.arange(start, stop, dtype=np.int64),
                    "row": rows[start:stop],
                    "image": [str(x) for x in images[start:stop]],
                    "lat": coords[start:stop, 0],
                    "lon": coords[start:stop, 1],
                    "ok": ok,
                    "error": errors,
                },
            )
    if world_size > 1:
        return None
    store = writer.finalize()
    if store.n_failed:
        warnings.warn(
            f"{writer.out_dir}: {store.n_failed} of {total} images could not be encoded; "
            f"see FeatureStore.failures (CLI: geoalign features info)",
            stacklevel=2,
        )
    return store


def forget_foreign_shards(
    writer: FeatureStoreWriter, images: Sequence[Any], coords: np.ndarray
) -> None:
    """After a torn index was rebuilt, keep only the shards made from these very rows (the
    manifest hash the index recorded is gone, so the shards' own metadata is compared)."""
    for shard in list(writer.recovered):
        start, stop = writer.shard_range(shard)
        meta = pq.read_table(writer.out_dir / shard_file_names(shard)[1]).to_pandas()
        same = meta["image"].tolist() == [str(x) for x in images[start:stop]] and np.array_equal(
            meta[["lat", "lon"]].to_numpy(), coords[start:stop]
        )
        if not same:
            writer.forget(shard)


def encode_with(
    module: torch.nn.Module,
    transform: Callable[[Any], torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Callable[[list[Any]], torch.Tensor]:
    """An encode_fn for a backbone module: transform each image, stack, forward without grad.

    `transform` defaults to `module.transform`; device/dtype default to the module's parameters.
    A transform that makes [K, 3, S, S] per image (ten crops, K views) gives [B, K, dim]: the
    B x K images go through the module as one batch. Items prepared already (an extraction's
    prepare_fn) take `transform=torch.as_tensor`.
    """
    transform = transform if transform is not None else getattr(module, "transform", None)
    if transform is None:
        raise ValueError("give a transform, or a module with a .transform attribute")
    param = next(module.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dtype = dtype or (param.dtype if param is not None else torch.float32)

    @torch.inference_mode()
    def encode(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([transform(img) for img in images])
        if device.type == "cuda" and pixels.device.type == "cpu":  # pinned: an async copy
            pixels = pixels.pin_memory()
        pixels = pixels.to(device=device, dtype=dtype, non_blocking=True)
        if pixels.dim() == 5:  # [B, K, 3, S, S]: K crops or views of each image
            return module(pixels.flatten(0, 1)).reshape(*pixels.shape[:2], -1)
        return module(pixels)

    return encode
