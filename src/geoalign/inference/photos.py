"""Photos in, batches of preprocessed pixels and their queries out, for `Geolocator`.

Apart from the locator so that batching (paths, folders, webdataset shards, ten-crop, skipped
and unreadable inputs) is one job: `predict` and evaluation from photos read the same batches.

With `decode="gpu"` the DataLoader workers only read each JPEG's bytes (CUDA cannot run in
worker processes) and the main process decodes them on the model's device (nvJPEG) and applies
the transform there. Whatever the device cannot take as the CPU path would (PNG, CMYK, a bad
header, past the pixel limit) is decoded and transformed by the CPU path in the worker, and a
JPEG the device fails on is decoded by the CPU path in the main process, so pixels, skipped
photos and their reasons stay those of `decode="cpu"`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geoalign.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageBatch,
    ImageInputDataset,
    ImageLoadError,
    ImageSource,
    collate_images,
    expand_inputs,
    load_image,
)
from geoalign.data.wds_images import ShardPhotoDataset, ShardPhotos
from geoalign.data.wds_samples import decode_image, image_field
from geoalign.errors import DataError

DECODES = ("cpu", "gpu")
"""Where JPEGs are decoded: cpu (Pillow, in the workers) or gpu (the model's device)."""

EXIF_ORIENTATION = 0x0112

Item = tuple[ImageSource, Any, ImageLoadError | None]
"""What a dataset yields: (source, tensor or raw photo or None, error or None)."""


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
    decode: str = "cpu",
    decode_device: torch.device | str | None = None,
) -> tuple[list[Any], Any]:
    """(input sources, a DataLoader of their preprocessed pixels) for `backbone`'s transform.

    `images` may be a `geoalign.data.wds_images.ShardPhotos` (photos of webdataset shards,
    named by sample key), streamed shard by shard instead of loaded by path. `pin_memory`
    (None: when the backbone runs on CUDA) puts batches in page-locked memory, so their copy to
    the GPU overlaps the forward (the backbone copies with non_blocking=True). `decode="gpu"`
    decodes JPEGs on the backbone's CUDA device (see the module docstring); `decode_device`
    names another device for that path (tests run it on the CPU)."""
    from torch.utils.data import DataLoader

    from geoalign.data.transforms import ten_crop_transform

    if backbone is None:
        raise ValueError("this Geolocator has no backbone: use predict_features")
    device = _decode_device(backbone, decode, decode_device)
    transform = ten_crop_transform(backbone.preprocess) if ten_crop else backbone.transform
    max_pixels = images.max_pixels if isinstance(images, ShardPhotos) else DEFAULT_MAX_PIXELS
    if isinstance(images, ShardPhotos):
        sources = images.sources(skip)
        dataset = (
            images.dataset(sources, transform)
            if device is None
            else ShardJpegDataset(sources, transform, max_pixels=max_pixels)
        )
    else:
        sources = expand_inputs(images, recursive=recursive)
        if skip:
            sources = [s for s in sources if s.name not in skip]
        kind = ImageInputDataset if device is None else FileJpegDataset
        dataset = kind(sources, transform, max_pixels=max_pixels)
    if device is not None:  # raw photos out of the workers, batches made on the device
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
        )
        return sources, DeviceDecodedBatches(loader, transform, device, max_pixels)
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


def _decode_device(
    backbone: Any, decode: str, decode_device: torch.device | str | None
) -> torch.device | None:
    """The device JPEGs are decoded on in the main process; None: Pillow in the workers."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "cpu":
        return None
    if decode_device is not None:
        return torch.device(decode_device)
    device = _device_of(backbone)
    if device.type != "cuda":
        raise DataError(
            f"decode='gpu' decodes on the backbone's GPU, but the backbone is on {device}; "
            "move it to a CUDA device or decode on the cpu"
        )
    return device


def _device_of(module: Any) -> torch.device:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _as_list(items: list[Item]) -> list[Item]:
    """collate_fn of the raw path: the batch is made in the main process (picklable, unlike a
    lambda, for workers that spawn)."""
    return items


# ----------------------------------------------------------------------------- in the workers


@dataclass(frozen=True)
class EncodedJpeg:
    """A photo as its JPEG bytes, for the main process to decode on the device.

    `path`: its file (None: a shard sample's bytes), which the CPU path re-reads if the device
    cannot decode it; `where`: what the CPU path appends to the photo's errors (' (in x.tar)').
    """

    data: bytes
    orientation: int = 1
    path: Path | None = None
    where: str = ""


def jpeg_orientation(data: bytes, max_pixels: int | None) -> int | None:
    """EXIF orientation (1-8) of a JPEG the device decodes to the CPU path's pixels (RGB or
    grayscale, within `max_pixels`); None for anything else, which the CPU path then decodes,
    so that its pixels and its error messages stay the CPU path's. Reads the header only."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None
                width, height = image.size
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # Pillow cannot read its header: the CPU path words the error
        return None
    if width * height == 0 or (max_pixels is not None and width * height > max_pixels):
        return None
    return orientation if orientation in range(1, 9) else 1  # as exif_transpose: else unrotated


class FileJpegDataset(ImageInputDataset):
    """`ImageInputDataset` whose JPEG files come out as their bytes (`EncodedJpeg`); any other
    input is decoded and transformed here, as on the CPU path."""

    def __getitem__(self, i: int) -> Item:
        source = self.sources[i]
        if isinstance(source.value, Path):
            jpeg = _read_jpeg(source.value, self.max_pixels)
            if jpeg is not None:
                return source, jpeg, None
        return super().__getitem__(i)


def _read_jpeg(path: Path, max_pixels: int | None) -> EncodedJpeg | None:
    try:
        data = path.read_bytes()
    except OSError:  # missing, a folder, unreadable: the CPU path says which
        return None
    orientation = jpeg_orientation(data, max_pixels)
    return None if orientation is None else EncodedJpeg(data, orientation, path=path)


class ShardJpegDataset(ShardPhotoDataset):
    """`ShardPhotoDataset` whose JPEG samples come out as their bytes (`EncodedJpeg`); any other
    sample is decoded and transformed (or reported) here, as on the CPU path."""

    def _item(self, source: ImageSource, sample: dict[str, Any]) -> Item:
        name = image_field(sample)
        if name is not None and sample["__key__"] == source.value.key:
            orientation = jpeg_orientation(sample[name], self.max_pixels)
            if orientation is not None:
                where = f" (in {Path(source.value.url).name})"
                return source, EncodedJpeg(sample[name], orientation, where=where), None
        return super()._item(source, sample)


# ----------------------------------------------------------------------------- on the device


class DeviceDecodedBatches:
    """Iterates `ImageBatch`es: each raw batch of `loader` decoded and transformed on `device`
    in this process; inputs the workers already preprocessed are moved there."""

    def __init__(
        self,
        loader: Iterable[list[Item]],
        transform: Callable[[Any], torch.Tensor],
        device: torch.device,
        max_pixels: int | None,
    ) -> None:
        self.loader = loader
        self.transform = transform
        self.device = device
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[ImageBatch]:
        for items in self.loader:
            yield collate_images([self._on_device(item) for item in items])

    def _on_device(self, item: Item) -> Item:
        source, payload, error = item
        if payload is None:
            return item
        if isinstance(payload, torch.Tensor):
            return source, payload.to(self.device), error
        try:
            return source, self._pixels(source, payload), None
        except ImageLoadError as err:
            return source, None, err

    def _pixels(self, source: ImageSource, jpeg: EncodedJpeg) -> torch.Tensor:
        from geoalign.data.images import decode_jpeg  # looked up per call: tests spy on it

        try:
            image = orient(
                decode_jpeg(jpeg.data, source.name, device=self.device), jpeg.orientation
            )
        except ImageLoadError:  # what the device refuses, Pillow may read: the CPU path decides
            image = self._cpu_image(source, jpeg)
        try:
            return self.transform(image).to(self.device)
        except Exception as err:  # one bad image (e.g. 1x1 pixel) must not stop the batch
            reason = f"preprocessing failed ({type(err).__name__}: {err}){jpeg.where}"
            raise ImageLoadError(source.name, reason) from err

    def _cpu_image(self, source: ImageSource, jpeg: EncodedJpeg) -> Image.Image:
        """The photo as the CPU path decodes it, or its error in the CPU path's words."""
        if jpeg.path is not None:
            return load_image(jpeg.path, max_pixels=self.max_pixels)
        try:
            return decode_image(jpeg.data, source.name, max_pixels=self.max_pixels)
        except ImageLoadError as err:
            raise ImageLoadError(source.name, f"{err.reason}{jpeg.where}") from err


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] pixels turned upright by their EXIF orientation, as `PIL.ImageOps.exif_transpose`
    turns the CPU path's images."""
    if orientation in (5, 6, 7, 8):  # the rotations by 90 degrees: first swap height and width
        pixels = pixels.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return pixels.flip(flips) if flips else pixels


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
