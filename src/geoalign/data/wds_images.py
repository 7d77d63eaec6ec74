"""Photos of shards, named by sample key, streamed for `predict` and evaluation from photos.

`list_photos` lists the samples that hold an image (no coordinates needed: predict ignores
them); `photos_with_truth` lists those with coordinates too, as evaluation needs. Either gives a
`ShardPhotos`, which `Geolocator` reads like a list of image files: `dataset()` is an
IterableDataset that reads each shard forward once and decodes only the samples asked for, so
memory holds one batch of images whatever the number of shards. Under DataLoader workers each
worker reads its own shards (or, with fewer shards than workers, its own blocks of samples).

Local uncompressed shards are read by seeking over the members not wanted (a resumed run skips
the samples it already did without reading them); URLs, pipes and compressed tars are streamed.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geoalign.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, ImageSource
from geoalign.data.wds_listing import ShardRef, list_shards
from geoalign.data.wds_samples import BadSample, _raw_samples, decode_image, image_field
from geoalign.data.wds_specs import _wds, expand_shards
from geoalign.errors import DataError

BLOCK = 64
"""Samples per work block when workers share a shard (fewer shards than workers)."""


@dataclass
class ShardPhotos:
    """Samples of shards that hold an image: their refs in shard order, and the bad ones.

    `coords` [N, 2] is set when the listing read coordinates (evaluation); the keys are the
    photos' names (prediction records' `source`, the report's ids).
    """

    refs: list[ShardRef]
    bad: list[BadSample] = field(default_factory=list)
    coords: np.ndarray | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.refs]

    def sources(self, skip: set[str] | None = None) -> list[ImageSource]:
        """One `ImageSource` per photo (value: its `ShardRef`), those named in `skip` left out."""
        return [
            ImageSource(i, r.key, r)
            for i, r in enumerate(self.refs)
            if not skip or r.key not in skip
        ]

    def dataset(
        self, sources: Sequence[ImageSource], transform: Callable[[Any], Tensor]
    ) -> ShardPhotoDataset:
        """The (source, tensor or None, error or None) items of `sources`, for collate_images."""
        return ShardPhotoDataset(list(sources), transform, max_pixels=self.max_pixels)


def list_photos(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> ShardPhotos:
    """Samples that hold an image, without decoding any; samples without one, and samples
    whose key was already seen (keys name the predictions), are listed as bad."""
    refs: list[ShardRef] = []
    bad: list[BadSample] = []
    seen: dict[str, str] = {}
    for url in expand_shards(shards):
        for ordinal, sample in enumerate(_raw_samples(url, images=False)):
            key = sample["__key__"]
            if image_field(sample) is None:
                have = sorted(k for k in sample if not k.startswith("__"))
                reason = f"no image member (jpg/jpeg/png/webp); members: {', '.join(have)}"
                bad.append(BadSample(url, key, reason))
            elif key in seen:
                reason = f"duplicate key: also a sample of {seen[key]}; make sample keys unique"
                bad.append(BadSample(url, key, reason))
            else:
                seen[key] = url
                refs.append(ShardRef(url, ordinal, key))
    return ShardPhotos(refs, bad)


def photos_with_truth(
    shards: str | os.PathLike | Sequence[str | os.PathLike], *, cache_dir: str | Path | None = None
) -> ShardPhotos:
    """Samples with an image and valid lat/lon (json or txt), their coordinates as the truth;
    the others are listed as bad with the reason (`list_shards`)."""
    listing = list_shards(shards, cache_dir=cache_dir)
    bad = list(listing.bad)
    refs: list[ShardRef] = []
    keep: list[int] = []
    seen: dict[str, str] = {}
    for i, ref in enumerate(listing.refs):
        if ref.key in seen:
            reason = f"duplicate key: also a sample of {seen[ref.key]}; make sample keys unique"
            bad.append(BadSample(ref.url, ref.key, reason))
            continue
        seen[ref.key] = ref.url
        refs.append(ref)
        keep.append(i)
    return ShardPhotos(refs, bad, listing.coords()[np.asarray(keep, dtype=np.int64)])


def _local_tar(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url) and url.endswith(".tar")


def _seek_samples(url: str, wanted: set[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(ordinal, sample) of the wanted samples of a local tar, its other members seeked over.

    Members are grouped exactly as the listing groups them (`_raw_samples(images=False)`), so
    ordinals agree; only the wanted samples' members are read.
    """
    tariterators = _wds().tariterators
    base_plus_ext = tariterators.base_plus_ext
    last = max(wanted) if wanted else -1
    try:
        tar = tarfile.open(url, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{url}: cannot read shard ({type(err).__name__}: {err})") from err
    with tar:

        def members() -> Iterator[dict[str, Any]]:
            for info in tar:
                tar.members = []  # headers of a 10,000-sample shard need not stay in memory
                if info.isreg() and base_plus_ext(info.name)[1] is not None:
                    yield {"fname": info.name, "data": info, "__url__": url}

        try:
            grouped = tariterators.group_by_keys(members())
            for ordinal, sample in enumerate(grouped):
                if ordinal in wanted:
                    yield (
                        ordinal,
                        {
                            k: tar.extractfile(v).read() if isinstance(v, tarfile.TarInfo) else v
                            for k, v in sample.items()
                        },
                    )
                if ordinal >= last:
                    return
        except (tarfile.TarError, OSError, ValueError) as err:
            raise DataError(f"{url}: cannot read shard ({type(err).__name__}: {err})") from err


def _stream_samples(url: str, wanted: set[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    last = max(wanted) if wanted else -1
    for ordinal, sample in enumerate(_raw_samples(url)):
        if ordinal in wanted:
            yield ordinal, sample
        if ordinal >= last:
            return


def read_samples(url: str, wanted: set[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(ordinal, raw sample) of the wanted samples of one shard, in shard order."""
    reader = _seek_samples if _local_tar(url) else _stream_samples
    yield from reader(url, wanted)


class ShardPhotoDataset(torch.utils.data.IterableDataset):
    """Decoded, transformed photos of shards in shard order; failures ride along as errors.

    Items are (ImageSource, tensor or None, ImageLoadError or None), as `ImageInputDataset`'s
    are, so `collate_images` batches them. The error names the sample by key (its record's
    source) and says which shard it is in.
    """

    def __init__(
        self,
        sources: list[ImageSource],
        transform: Callable[[Any], Tensor],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.sources = sources
        self.transform = transform
        self.max_pixels = max_pixels

    def _mine(self) -> list[ImageSource]:
        """The sources this DataLoader worker reads: whole shards when there are enough of them
        for every worker, else blocks of BLOCK samples dealt round."""
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers == 1:
            return self.sources
        urls = list(dict.fromkeys(s.value.url for s in self.sources))
        if len(urls) >= info.num_workers:
            mine = set(urls[info.id :: info.num_workers])
            return [s for s in self.sources if s.value.url in mine]
        return [s for j, s in enumerate(self.sources) if (j // BLOCK) % info.num_workers == info.id]

    def __iter__(self) -> Iterator[tuple[ImageSource, Tensor | None, ImageLoadError | None]]:
        by_url: dict[str, list[ImageSource]] = {}
        for source in self._mine():
            by_url.setdefault(source.value.url, []).append(source)
        for url, group in by_url.items():
            pending = {s.value.ordinal: s for s in group}
            for ordinal, sample in read_samples(url, set(pending)):
                yield self._item(pending.pop(ordinal), sample)
            for source in pending.values():  # the shard ended early: it changed since listing
                err = ImageLoadError(source.name, f"not found in {url} (the shard changed?)")
                yield source, None, err

    def _item(
        self, source: ImageSource, sample: dict[str, Any]
    ) -> tuple[ImageSource, Tensor | None, ImageLoadError | None]:
        ref: ShardRef = source.value
        where = f"in {Path(ref.url).name}"
        if sample["__key__"] != ref.key:
            reason = f"{where}: sample {ref.ordinal} is now {sample['__key__']!r}; list again"
            return source, None, ImageLoadError(source.name, reason)
        name = image_field(sample)
        try:
            if name is None:
                raise ImageLoadError(source.name, "no image member")
            image = decode_image(sample[name], source.name, max_pixels=self.max_pixels)
        except ImageLoadError as err:
            return source, None, ImageLoadError(source.name, f"{err.reason} ({where})")
        try:
            return source, self.transform(image), None
        except Exception as err:  # one bad image (e.g. 1x1 pixel) must not stop the batch
            reason = f"preprocessing failed ({type(err).__name__}: {err}) ({where})"
            return source, None, ImageLoadError(source.name, reason)
