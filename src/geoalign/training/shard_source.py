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
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
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
from geoalign.training.data import Batch, _local, epoch_seed, fraction_mask

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
    """This process's batches of one epoch, each worker decoding every n-th of them."""

    def __init__(self, source: ShardImageSource, batches: list[np.ndarray]) -> None:
        self.source = source
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
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

        for batch in mine:
            views = [self.source.views(refs[i], sample(i)) for i in batch.tolist()]
            yield torch.stack(views), self.source.coords[torch.from_numpy(batch)]


class ShardImageSource:
    """Photos of webdataset shards with their json/txt lat/lon, each as P augmented views."""

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

    def views(self, ref: Any, raw: dict[str, Any]) -> Tensor:
        """[P, 3, S, S] views of one sample; a photo that cannot be used names shard and key."""
        if raw["__key__"] != ref.key:
            raise DataError(
                f"{ref.url}: sample {ref.ordinal} is {raw['__key__']!r}, the listing says "
                f"{ref.key!r}; the shard changed since it was listed (delete the run's .wds-listing)"
            )
        name = image_field(raw)
        try:
            if name is None:
                raise ImageLoadError(str(ref), "no image member")
            return self.transform(decode_image(raw[name], str(ref), max_pixels=DEFAULT_MAX_PIXELS))
        except ImageLoadError as err:
            raise DataError(f"{err}; remove the sample or rewrite the shard") from err

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        order = epoch_order(self.listing, self.rows, seed, epoch)
        batches = [
            _local(order[k * batch_size : (k + 1) * batch_size], batch_size, rank, world)
            for k in range(skip, self.n_rows // batch_size)
        ]
        loader = torch.utils.data.DataLoader(
            _ShardViews(self, batches),
            batch_size=None,
            num_workers=min(self.num_workers, len(batches)),
            persistent_workers=False,
        )
        for pixels, coords in loader:
            yield {"pixels": pixels, "coords": coords}
