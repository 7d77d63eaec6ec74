"""Training data: (features or images, coordinates) in global batches that are reproducible and
resumable.

Every epoch's batch order is a pure function of (seed, epoch). Under DDP each process takes its
contiguous slice of each global batch, so N processes see exactly the rows one process would, and
the loss (gathered over processes) is the single-process loss. On resume, the first `skip` global
batches of the interrupted epoch are passed over, so a killed-and-resumed run sees the same data in
the same order as an uninterrupted one. Incomplete last batches are dropped (fixed batch shapes).

Sources:
- `ArraySource`: features and coordinates in memory (small data, the quickstart, tests);
- `StoreSource`: a `geoalign.data.feature_store.FeatureStore`, streamed a few shards at a time
  (bounded memory whatever the store size: MP-16's 4.7M rows included);
- `ImageSource`: a manifest of photos, decoded in DataLoader workers into P SimCLR views each,
  or (`data.decode: gpu`) read as bytes by the workers and decoded on this process's GPU by
  `DeviceViews`, which applies the views transform there too.

`feature_rows` reads the labelled features a config's `data` section names through the one
loader (`geoalign.data.feature_rows`), for every method's training, its calibration and its
concept bottleneck alike.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from geoalign.data import feature_rows as loader
from geoalign.errors import DataError, GeoalignError

Batch = dict[str, Tensor]


def feature_rows(
    data: Any, arrays: tuple[Any, Any] | None = None
) -> loader.FeatureRows | loader.StoreRows | None:
    """The labelled feature rows `data` (a config's data section: `source`, `path`) names: the
    arrays passed in, scene labels in memory, or a store opened for streaming; None for photos."""
    if data.source == "arrays":
        if arrays is None:
            raise GeoalignError("data.source 'arrays' needs features and coordinates passed in")
        return loader.FeatureRows.from_arrays(*arrays)
    if data.source == "store" and not data.path:
        raise DataError("data.path: the feature store folder is required for source 'store'")
    spec = loader.data_source_spec(data.source, data.path)
    if spec is None:
        return None
    return loader.open_feature_rows(spec, training_views=True, store_only=data.source == "store")


def fraction_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """A fixed uniform subset of rows for limited-data training (the paper's 20/10/5 %)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.ones(n, dtype=bool)
    keep = int(round(n * fraction))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=keep, replace=False)] = True
    return mask


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**63 - 1)


class BatchSource(Protocol):
    n_rows: int

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]: ...


def _local(rows: Any, batch_size: int, rank: int, world: int) -> Any:
    b = batch_size // world
    return rows[rank * b : (rank + 1) * b]


class ArraySource:
    """In-memory features [N, D] (or [N, P, D]) and coordinates [N, 2]."""

    def __init__(
        self,
        features: Tensor | np.ndarray,
        coords: Tensor | np.ndarray,
        *,
        fraction: float = 1.0,
        fraction_seed: int = 0,
    ) -> None:
        features = torch.as_tensor(
            np.asarray(features) if not torch.is_tensor(features) else features
        )
        coords = torch.as_tensor(coords, dtype=torch.float32)
        if len(features) != len(coords):
            raise ValueError(f"{len(features)} feature rows but {len(coords)} coordinates")
        keep = torch.from_numpy(np.flatnonzero(fraction_mask(len(coords), fraction, fraction_seed)))
        self.features = features.float()[keep]
        self.coords = coords[keep]
        self.n_rows = len(keep)

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(self.n_rows, generator=gen)
        for k in range(skip, self.n_rows // batch_size):
            rows = _local(perm[k * batch_size : (k + 1) * batch_size], batch_size, rank, world)
            yield {"features": self.features[rows], "coords": self.coords[rows]}


def _prefetch(iterator: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run a (IO-bound) iterator in a thread, `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    error: list[BaseException] = []
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # re-raised in the consumer
            error.append(err)
        finally:
            q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                if error:
                    raise error[0]
                return
            yield item
    finally:
        stop.set()


class StoreSource:
    """Stream a feature store: memory is a couple of shards plus one read chunk, not the store.

    A store of K augmented views per image (`features extract --views K`) gives P = `views`
    distinct views of each row per step ([b, P, D]; [b, D] when P is 1), drawn afresh for every
    global batch from (seed, epoch, batch): resumable, and the same under DDP. A single-view
    store has no views to draw, so P > 1 is refused there.
    """

    def __init__(
        self,
        store: Any,
        *,
        fraction: float = 1.0,
        fraction_seed: int = 0,
        read_rows: int = 65536,
        buffer_shards: int = 2,
        views: int = 1,
    ) -> None:
        from geoalign.data.feature_store import FeatureStore
        from geoalign.data.feature_store_views import TEN_CROP

        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        if self.store.view_kind == TEN_CROP:
            raise DataError(
                f"{self.store.path}: a ten-crop store holds evaluation queries (10 crops per "
                "photo), not training rows; train from a single-view store or from one of "
                "augmented views (`geoalign features extract --views K --augment simclr`)"
            )
        stored = self.store.views
        if views < 1 or views > stored:
            have = (
                f"{stored} {self.store.view_kind} views per image"
                if stored > 1
                else "one view per image"
            )
            raise DataError(
                f"data.views={views}: {self.store.path} holds {have}; extract a store of K >= "
                f"{views} views (`geoalign features extract --views K --augment simclr`) or set "
                "data.views to at most that"
            )
        self.views = views
        self.mask = fraction_mask(len(self.store), fraction, fraction_seed)
        self.n_rows = int(self.mask.sum())
        # a chunk of K-view rows is K times the bytes: keep the chunk's memory that of one view
        read_rows = max(1, read_rows // stored)
        self.read_rows = read_rows
        self.buffer_shards = buffer_shards

    def pick_views(self, n: int, seed: int, epoch: int, batch: int) -> np.ndarray:
        """[n, P] distinct view numbers (of the store's K) for the rows of global batch `batch`."""
        rng = np.random.default_rng([int(seed), int(epoch), int(batch), 0x5649])
        return np.argsort(rng.random((n, self.store.views)), axis=1)[:, : self.views]

    def _rows(self, epoch: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for part in self.store.iter_batches(
            self.read_rows,
            shuffle=True,
            seed=epoch_seed(seed, epoch),
            buffer_shards=self.buffer_shards,
        ):
            keep = self.mask[part["index"]]
            yield part["features"][keep], part["coords"][keep]

    def _global_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[tuple]:
        feats: list[np.ndarray] = []
        coords: list[np.ndarray] = []
        held = 0
        for f, c in self._rows(epoch, seed):
            feats.append(f)
            coords.append(c)
            held += len(f)
            if held < batch_size:
                continue
            f_all, c_all = np.concatenate(feats), np.concatenate(coords)
            n_full = len(f_all) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                yield f_all[start : start + batch_size], c_all[start : start + batch_size]
            feats, coords = [f_all[n_full:]], [c_all[n_full:]]
            held = len(feats[0])

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        def produce() -> Iterator[Batch]:
            for k, (f, c) in enumerate(self._global_batches(epoch, batch_size, seed)):
                if k < skip:
                    continue
                local = _local(f, batch_size, rank, world)
                if f.ndim == 3:  # K views per row: P of them, chosen for the global batch
                    pick = _local(self.pick_views(len(f), seed, epoch, k), batch_size, rank, world)
                    local = np.take_along_axis(local, pick[:, :, None], axis=1)
                    local = local[:, 0] if self.views == 1 else local
                yield {
                    "features": torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)),
                    "coords": torch.from_numpy(
                        np.ascontiguousarray(_local(c, batch_size, rank, world), dtype=np.float32)
                    ),
                }

        n_batches = self.n_rows // batch_size
        for k, batch in enumerate(_prefetch(produce())):
            if k + skip >= n_batches:  # filtering by fraction can leave one spare batch
                return
            yield batch


class _ViewsDataset(torch.utils.data.Dataset):
    def __init__(self, manifest: Any, transform: Callable[[Any], Tensor], max_pixels: Any) -> None:
        self.paths = manifest.paths() if callable(manifest.paths) else manifest.paths
        coords = manifest.coords() if callable(manifest.coords) else manifest.coords
        self.coords = torch.tensor(np.array(coords, dtype=np.float32))
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from geoalign.data.images import load_image

        image = load_image(self.paths[int(i)], max_pixels=self.max_pixels)
        return self.transform(image), self.coords[int(i)]


class _RawPhotos(_ViewsDataset):
    """The manifest's photos as their file bytes (`data.decode: gpu`): a worker process cannot
    use CUDA, so the process that trains decodes them."""

    def __getitem__(self, i: int) -> tuple[RawPhoto, Tensor]:  # type: ignore[override]
        return read_photo(self.paths[int(i)], self.max_pixels), self.coords[int(i)]


class ImageSource:
    """Photos from a manifest, each as P augmented views [P, 3, S, S] (SimCLR augmentations).

    `decode_device` None: DataLoader workers decode (Pillow) and transform; a device (`cuda`:
    the current CUDA device when iterating; `cpu` in tests): workers read the files' bytes and
    this process decodes and transforms them there (`DeviceViews`), in the same order, with the
    same errors.
    """

    def __init__(
        self,
        manifest: Any,
        transform: Callable[[Any], Tensor],
        *,
        fraction: float = 1.0,
        fraction_seed: int = 0,
        num_workers: int = 2,
        decode_device: torch.device | str | None = None,
    ) -> None:
        from geoalign.data.images import DEFAULT_MAX_PIXELS

        kind = _ViewsDataset if decode_device is None else _RawPhotos
        self.dataset = kind(manifest, transform, DEFAULT_MAX_PIXELS)
        self.rows = np.flatnonzero(fraction_mask(len(self.dataset), fraction, fraction_seed))
        self.n_rows = len(self.rows)
        self.num_workers = num_workers
        self.decoder = device_views(transform, decode_device)

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        rng = np.random.default_rng(epoch_seed(seed, epoch))
        perm = self.rows[rng.permutation(self.n_rows)]
        batches = [
            _local(perm[k * batch_size : (k + 1) * batch_size], batch_size, rank, world).tolist()
            for k in range(skip, self.n_rows // batch_size)
        ]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            persistent_workers=False,
            collate_fn=None if self.decoder is None else raw_batch,
        )
        if self.decoder is None:
            for pixels, coords in loader:
                yield {"pixels": pixels, "coords": coords}
            return
        for (photos, coords), rows in zip(loader, batches, strict=True):
            yield {"pixels": self._on_device(self.decoder, photos, rows), "coords": coords}

    def _on_device(self, decoder: DeviceViews, photos: list[RawPhoto], rows: list[int]) -> Tensor:
        """The batch's views, decoded by `decoder`; a photo it cannot take goes through
        `load_image`, the CPU path's decode (and its error text)."""
        from geoalign.data.images import load_image

        paths = [self.dataset.paths[i] for i in rows]
        fallbacks = [partial(load_image, p, max_pixels=self.dataset.max_pixels) for p in paths]
        return decoder(photos, [str(p) for p in paths], fallbacks)


# --- photos decoded in the training process (data.decode: gpu) --------------------------------------


@dataclass(frozen=True)
class RawPhoto:
    """A photo's bytes as a DataLoader worker read them, for the training process to decode.

    `orientation`: the EXIF orientation of a JPEG the device decodes to the CPU path's pixels
    (RGB or grayscale, within the pixel limit); None: anything else (PNG, CMYK, a bad header, an
    unreadable file), which the CPU path decodes instead, so pixels and errors stay its own.
    """

    data: bytes
    orientation: int | None


def raw_photo(data: bytes, max_pixels: int | None) -> RawPhoto:
    """`data` with what its header says (Pillow reads only the header: cheap, in the worker)."""
    from geoalign.inference.photos import jpeg_orientation

    return RawPhoto(data, jpeg_orientation(data, max_pixels))


def read_photo(path: str | Path, max_pixels: int | None) -> RawPhoto:
    """A photo file's bytes; one that cannot be read goes to the CPU path, which says why."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return RawPhoto(b"", None)
    return raw_photo(data, max_pixels)


def raw_batch(items: list[tuple[RawPhoto, Tensor]]) -> tuple[list[RawPhoto], Tensor]:
    """collate_fn of raw photos: the photos as a list, the coordinates stacked (a module-level
    function, picklable for workers that spawn)."""
    return [photo for photo, _ in items], torch.stack([coords for _, coords in items])


class DeviceViews:
    """Decodes a batch of raw photos on `device` (nvJPEG on CUDA) and applies the views transform
    there: the workers' job on the CPU path, in the one process that may use CUDA.

    A JPEG the device refuses, and every photo the device would not decode as Pillow does (the
    worker's header read said so: `RawPhoto.orientation` None, past the pixel limit included), is
    decoded by its fallback (the CPU path's decode, raising that path's error), so the pixels (up
    to IDCT rounding) and the errors are those of the CPU path.
    """

    def __init__(self, transform: Callable[[Any], Tensor], device: torch.device) -> None:
        self.transform = transform
        self.device = device

    def __call__(
        self,
        photos: Sequence[RawPhoto],
        names: Sequence[str],
        fallbacks: Sequence[Callable[[], Any]],
    ) -> Tensor:
        """[b, P, 3, S, S] views of the batch's photos, on the device."""
        from geoalign.inference.photos import orient

        device = _current(self.device)
        decoded = [
            self._decode(photo, name, fallback, device)
            for photo, name, fallback in zip(photos, names, fallbacks, strict=True)
        ]
        return torch.stack([self.transform(orient(pixels, turn)) for pixels, turn in decoded])

    def _decode(
        self, photo: RawPhoto, name: str, fallback: Callable[[], Any], device: torch.device
    ) -> tuple[Tensor, int]:
        """(uint8 [3, H, W] on the device, EXIF orientation still to apply)."""
        from torchvision.transforms.v2.functional import pil_to_tensor

        from geoalign.data import images  # looked up per call: tests spy on decode_jpeg

        if photo.orientation is not None:
            try:
                return images.decode_jpeg(photo.data, name, device=device), photo.orientation
            except images.ImageLoadError:  # what the device refuses, Pillow may read
                pass
        return pil_to_tensor(fallback()).to(device), 1  # already upright


def device_views(
    transform: Callable[[Any], Tensor], device: torch.device | str | None
) -> DeviceViews | None:
    """The decoder of a source's `decode_device` (None: the workers decode with Pillow)."""
    return None if device is None else DeviceViews(transform, torch.device(device))


def _current(device: torch.device) -> torch.device:
    """A bare `cuda` is the current CUDA device: the one Lightning made this process's
    (cuda:LOCAL_RANK under a launcher) before the first batch is read."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


class DataPosition:
    """How far the current epoch's batches have got, for an exact mid-epoch resume.

    The count belongs to the epoch in which it was started (not to the trainer's epoch counter at
    save time): a checkpoint written after an epoch ended must not make a longer resumed run skip
    batches of the next epoch. Saved in checkpoints as {"epoch", "batches_done"}.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.done = 0  # global batches finished in `epoch`
        self._resume: tuple[int, int] | None = None

    def start(self, epoch: int) -> int:
        """An epoch's iteration begins: the batches to skip (those a resumed checkpoint did)."""
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        self.epoch, self.done = epoch, skip
        return skip

    def step(self) -> None:
        self.done += 1

    def state(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batches_done": int(self.done)}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self._resume = (int(state["epoch"]), int(state["batches_done"]))


class EpochLoader:
    """What Lightning iterates: one epoch of this process's batches, resumable mid-epoch.

    `position()` returns (epoch, batches already done in it), read when iteration starts.
    """

    def __init__(
        self,
        source: BatchSource,
        batch_size: int,
        seed: int,
        position: Callable[[], tuple[int, int]],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        if source.n_rows < batch_size:
            raise ValueError(
                f"only {source.n_rows} training rows for a batch of {batch_size}: lower the batch"
            )
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.position = position
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return self.source.n_rows // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        # A generator: the position is read at the first batch, not when iter() is called
        # (Lightning calls iter() once just to check the loader is iterable).
        epoch, skip = self.position()
        yield from self.source.iter_local_batches(
            epoch, self.batch_size, self.seed, self.rank, self.world, skip
        )
