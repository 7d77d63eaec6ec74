"""GeoSURGE training photos: decoded (resize, centre crop, normalise) with their segmentation maps.

An unreadable photo is never dropped silently. In training it is replaced by the next readable
training photo (in manifest order; deterministic), so every process keeps full batches and the
same batch count -- under DDP a shorter or missing batch on one process would leave the others
waiting in a collective. Held-out photos that cannot be read are left out of the metrics. Either
way each pass ends with one warning line on stderr: how many, and the first few with the reason.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from geoalign.errors import DataError
from geoalign.training.data import epoch_seed
from geoalign.training.geosurge.batches import Batch, GeoSurgeData, split_rows
from geoalign.training.geosurge.config import GeoSurgeTrainConfig

MAX_REPLACEMENT_TRIES = 1000  # this many unreadable photos in a row: the data, not bad luck
SHOWN = 3  # examples in the warning


class Unreadable(NamedTuple):
    path: str
    reason: str


class _PhotoDataset(torch.utils.data.Dataset):
    """Photo -> backbone pixels (resize + centre crop + normalise), its map, its coordinates.

    Items are (item or None, the photos that could not be read on the way); with `fill_from`
    (sorted rows), an unreadable photo is replaced by the next readable one of those rows."""

    def __init__(
        self,
        paths: list[Path],
        coords: np.ndarray,
        positions: np.ndarray,
        segs: Any,
        preprocess: Any,
        fill_from: np.ndarray | None = None,
    ) -> None:
        from geoalign.data.segmentation_store import crop_transform

        self.paths = paths
        self.coords = torch.tensor(np.asarray(coords), dtype=torch.float32)  # a copy
        self.positions = positions
        self.segs = segs
        self.preprocess = preprocess
        self.crop = crop_transform(preprocess)
        self.fill_from = None if fill_from is None else np.sort(np.asarray(fill_from))

    def filling(self, rows: np.ndarray) -> _PhotoDataset:
        """The same photos, unreadable ones replaced from `rows`."""
        twin = object.__new__(_PhotoDataset)
        twin.__dict__.update(self.__dict__)
        twin.fill_from = np.sort(np.asarray(rows))
        return twin

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> dict[str, Tensor]:
        from geoalign.data.images import load_image
        from geoalign.data.segmentation_store import normalize

        pixels = normalize(self.crop(load_image(self.paths[i])), self.preprocess)
        item = {"pixels": pixels, "coords": self.coords[i]}
        if self.segs is not None:
            item["seg"] = torch.from_numpy(self.segs[int(self.positions[i])])
        return item

    def _candidates(self, i: int) -> Iterator[int]:
        yield i
        rows = self.fill_from
        if rows is None or not len(rows):
            return
        start = int(np.searchsorted(rows, i, side="right"))
        for k in range(min(len(rows), MAX_REPLACEMENT_TRIES)):
            yield int(rows[(start + k) % len(rows)])

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor] | None, list[Unreadable]]:
        failed: list[Unreadable] = []
        for j in self._candidates(int(i)):
            try:
                return self._load(j), failed
            except Exception as err:  # counted and reported, never silent
                failed.append(Unreadable(str(self.paths[j]), _reason(err, str(self.paths[j]))))
        if self.fill_from is not None:
            raise DataError(
                f"{len(failed)} training photos in a row cannot be read (first: "
                f"{failed[0].path}: {failed[0].reason}): check the manifest and data.images_root"
            )
        return None, failed


def _reason(err: Exception, path: str) -> str:
    """The error in a few words: without the path (it is shown beside), at most 100 characters."""
    text = str(err).removeprefix(path).lstrip(": ") or type(err).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def _collate(items: list[tuple[dict[str, Tensor] | None, list[Unreadable]]]) -> Batch:
    good = [x for x, _ in items if x is not None]
    batch: dict[str, Any] = {k: torch.stack([x[k] for x in good]) for k in good[0]} if good else {}
    failed = [u for _, f in items for u in f]
    if failed:
        batch["unreadable"] = failed
    return batch


def warn_unreadable(failed: list[Unreadable], what: str) -> None:
    """One line on stderr: how many photos could not be read in `what`, and the first few."""
    if not failed:
        return
    unique = list(dict.fromkeys(failed))
    shown = "; ".join(f"{u.path} ({u.reason})" for u in unique[:SHOWN])
    more = f"; and {len(unique) - SHOWN} more" if len(unique) > SHOWN else ""
    print(
        f"warning: {len(unique)} unreadable photo(s) in {what}: {shown}{more}",
        file=sys.stderr,
        flush=True,
    )


class PhotoSource:
    """Photos of a manifest (and their segmentation maps) as a `BatchSource`.

    `replace_unreadable` (training): full batches always (see the module docstring); otherwise
    (held-out rows) unreadable photos are left out of their batch."""

    def __init__(
        self,
        dataset: _PhotoDataset,
        rows: np.ndarray,
        num_workers: int,
        *,
        replace_unreadable: bool,
    ) -> None:
        self.dataset = dataset.filling(rows) if replace_unreadable else dataset
        self.rows = rows
        self.n_rows = len(rows)
        self.num_workers = num_workers
        self.replace_unreadable = replace_unreadable

    def _loader(self, batches: list[list[int]], what: str) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=_collate
        )
        failed: list[Unreadable] = []
        kind = (
            "replaced by the next readable training photo"
            if self.replace_unreadable
            else "left out"
        )
        try:
            for batch in loader:
                failed += batch.pop("unreadable", [])
                if batch:
                    yield batch
        finally:  # also when training stops mid-epoch (max_steps)
            warn_unreadable(failed, f"{what} ({kind})")

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
        where = f", process {rank}" if world > 1 else ""
        return self._loader(batches, f"training epoch {epoch}{where}")

    def iter_all(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        mine = np.array_split(self.rows, world)[rank]
        where = f", process {rank}" if world > 1 else ""
        return self._loader(
            [
                c.tolist()
                for c in np.array_split(mine, max(1, math.ceil(len(mine) / batch_size)))
                if len(c)
            ],
            f"the held-out photos{where}",
        )


def photo_data(cfg: GeoSurgeTrainConfig) -> GeoSurgeData:
    """Photos of the manifest (with their maps for fusion): training rows and held-out rows."""
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
    train_local, val_local = split_rows(len(rows), cfg)
    dataset = _PhotoDataset(
        manifest.paths(), manifest.coords(), np.arange(len(manifest)), segs, backbone.preprocess
    )
    coords = manifest.coords()
    return GeoSurgeData(
        PhotoSource(dataset, rows[train_local], d.num_workers, replace_unreadable=True),
        PhotoSource(dataset, rows[val_local], d.num_workers, replace_unreadable=False),
        coords[rows[train_local]],
        None,
        backbone,
    )
