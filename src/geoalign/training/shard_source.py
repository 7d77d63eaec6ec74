"""Training from webdataset shards of photos (`data.source: wds`), P SimCLR views each.

The shards are listed once without decoding (`list_shards`, cached in the run folder, so a
resumed run or the other ranks do not list them again); every epoch's row order is then a pure
function of (listing, seed, epoch): the shards in a seeded order, their rows through a seeded
shuffle buffer of SHUFFLE_BUFFER rows, as webdataset pipelines shuffle. Global batch k is rows
[k*B, (k+1)*B) of that order, so, as for the other sources, N processes see exactly the rows one
process would, and a resumed run skips its first batches without reading them.

Each process reads only the samples of its slice of each batch, and each DataLoader worker only
those of its batches (k = worker id mod workers): local shards are read forward by seeking over
the other members, and a sample read ahead (the buffer mixes rows of a few shards) is held until
its batch comes, at most about a buffer's worth. An image that does not decode stops training
with its shard and key named, as a bad photo of a manifest does.

With a decode device (`data.decode: gpu`) the workers hand over each sample's image bytes
(checked against the listing as before) and the training process decodes and transforms them on
its GPU (`geoalign.training.data.DeviceViews`), with the CPU path's errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geoalign.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from geoalign.data.wds_images import read_samples
from geoalign.data.wds_listing import ShardManifest, list_shards
from geoalign.data.wds_samples import decode_image, image_field
from geoalign.errors import DataError
from geoalign.training.data import (
    Batch,
    DeviceViews,
    RawPhoto,
    _local,
    device_views,
    epoch_seed,
    fraction_mask,
    raw_photo,
)

SHUFFLE_BUFFER = 2048
"""Rows in the shuffle buffer: the order mixes about this many rows of neighbouring shards."""


def epoch_order(listing: ShardManifest, rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of `rows` (listing positions): shards shuffled, then a buffer shuffle."""
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    urls = [r.url for r in listing.refs]
    first: dict[str, int] = {}
    for i in rows.tolist():
        first.setdefault(urls[i], len(first))
    shard_of = np.asarray([first[urls[i]] for i in rows.tolist()], dtype=np.int64)
    rank = np.empty(len(first), dtype=np.int64)
    rank[rng.permutation(len(first))] = np.arange(len(first))
    stream = rows[np.argsort(rank[shard_of], kind="stable")]  # shard order shuffled, rows kept
    out = np.empty_like(stream)
    buffer = list(stream[:SHUFFLE_BUFFER])
    picks = rng.integers(0, max(len(buffer), 1), size=max(len(stream) - len(buffer), 0))
    for n, (row, j) in enumerate(zip(stream[len(buffer) :].tolist(), picks.tolist(), strict=True)):
        out[n] = buffer[j]
        buffer[j] = row
    tail = np.asarray(buffer, dtype=np.int64)
    rng.shuffle(tail)
    out[len(stream) - len(tail) :] = tail
    return out


class _ShardViews(torch.utils.data.IterableDataset):
    """This process's batches of one epoch, each worker decoding every n-th of them; `raw`: each
    worker only reading their image bytes, yielded with the batch's rows (listing positions)."""

    def __init__(
        self, source: ShardImageSource, batches: list[np.ndarray], raw: bool = False
    ) -> None:
        self.source = source
        self.batches = batches
        self.raw = raw

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = self.batches[worker::n_workers]
        refs = self.source.listing.refs
        wanted: dict[str, set[int]] = {}
        for batch in mine:
            for i in batch.tolist():
                wanted.setdefault(refs[i].url, set()).add(refs[i].ordinal)
        readers: dict[str, Iterator[tuple[int, dict[str, Any]]]] = {}
        held: dict[tuple[str, int], dict[str, Any]] = {}

        def sample(i: int) -> dict[str, Any]:
            ref = refs[i]
            if (ref.url, ref.ordinal) in held:
                return held.pop((ref.url, ref.ordinal))
            reader = readers.setdefault(ref.url, read_samples(ref.url, wanted[ref.url]))
            for ordinal, raw in reader:
                if ordinal == ref.ordinal:
                    return raw
                held[(ref.url, ordinal)] = raw
            raise DataError(f"{ref.url}: shard ended before sample {ref.key!r}; list it again")

        photo = self.source.raw_photo if self.raw else self.source.views
        for batch in mine:
            photos = [photo(refs[i], sample(i)) for i in batch.tolist()]
            coords = self.source.coords[torch.from_numpy(batch)]
            yield (photos, coords, batch.tolist()) if self.raw else (torch.stack(photos), coords)


class ShardImageSource:
    """Photos of webdataset shards with their json/txt lat/lon, each as P augmented views.

    `decode_device` None: DataLoader workers decode (Pillow) and transform; a device (`cuda`:
    the current CUDA device when iterating; `cpu` in tests): this process does, there.
    """

    def __init__(
        self,
        shards: str | list[str],
        transform: Callable[[Any], Tensor],
        *,
        fraction: float = 1.0,
        fraction_seed: int = 0,
        num_workers: int = 2,
        cache_dir: str | Path | None = None,
        say: Callable[[str], None] | None = None,
        decode_device: torch.device | str | None = None,
    ) -> None:
        self.listing = list_shards(shards, cache_dir=cache_dir)
        say = say or (lambda message: print(message, file=sys.stderr, flush=True))
        if self.listing.bad:
            shown = "; ".join(str(b) for b in self.listing.bad[:3])
            say(f"{len(self.listing.bad)} unusable shard samples left out of training ({shown})")
        if len(self.listing) == 0:
            raise DataError(f"{shards}: no sample with an image and lat/lon to train on")
        self.rows = np.flatnonzero(fraction_mask(len(self.listing), fraction, fraction_seed))
        self.n_rows = len(self.rows)
        self.coords = torch.tensor(self.listing.coords(), dtype=torch.float32)
        self.transform = transform
        self.num_workers = num_workers
        self.decoder = device_views(transform, decode_device)

    def views(self, ref: Any, raw: dict[str, Any]) -> Tensor:
        """[P, 3, S, S] views of one sample; a photo that cannot be used names shard and key."""
        return self.transform(self.image(ref, raw[self._image_member(ref, raw)]))

    def raw_photo(self, ref: Any, raw: dict[str, Any]) -> RawPhoto:
        """One sample's image bytes for the training process to decode, checked as `views`
        checks the sample."""
        return raw_photo(raw[self._image_member(ref, raw)], DEFAULT_MAX_PIXELS)

    def image(self, ref: Any, data: bytes) -> Any:
        """A sample's image as the CPU path decodes it (Pillow), or its error naming shard and
        key."""
        try:
            return decode_image(data, str(ref), max_pixels=DEFAULT_MAX_PIXELS)
        except ImageLoadError as err:
            raise _unusable(err) from err

    def _image_member(self, ref: Any, raw: dict[str, Any]) -> str:
        """The sample's image member; a sample the listing does not describe is refused."""
        if raw["__key__"] != ref.key:
            raise DataError(
                f"{ref.url}: sample {ref.ordinal} is {raw['__key__']!r}, the listing says "
                f"{ref.key!r}; the shard changed since it was listed (delete the run's .wds-listing)"
            )
        name = image_field(raw)
        if name is None:
            err = ImageLoadError(str(ref), "no image member")
            raise _unusable(err) from err
        return name

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        order = epoch_order(self.listing, self.rows, seed, epoch)
        batches = [
            _local(order[k * batch_size : (k + 1) * batch_size], batch_size, rank, world)
            for k in range(skip, self.n_rows // batch_size)
        ]
        loader = torch.utils.data.DataLoader(
            _ShardViews(self, batches, raw=self.decoder is not None),
            batch_size=None,
            num_workers=min(self.num_workers, len(batches)),
            persistent_workers=False,
        )
        if self.decoder is None:
            for pixels, coords in loader:
                yield {"pixels": pixels, "coords": coords}
            return
        for photos, coords, rows in loader:
            yield {"pixels": self._on_device(self.decoder, photos, rows), "coords": coords}

    def _on_device(self, decoder: DeviceViews, photos: list[RawPhoto], rows: list[int]) -> Tensor:
        """The batch's views, decoded by `decoder`; a photo it cannot take goes through `image`,
        the CPU path's decode (and its error text)."""
        refs = [self.listing.refs[i] for i in rows]
        fallbacks = [partial(self.image, ref, p.data) for ref, p in zip(refs, photos, strict=True)]
        return decoder(photos, [str(ref) for ref in refs], fallbacks)


def _unusable(err: ImageLoadError) -> DataError:
    """A sample's photo that training cannot use: named, with what to do."""
    return DataError(f"{err}; remove the sample or rewrite the shard")
