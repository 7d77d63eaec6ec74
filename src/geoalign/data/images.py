"""Robust image input: paths, folders, PIL images, numpy arrays and tensors -> RGB 8-bit -> batches.

Every decoder failure is reported per file as an `ImageLoadError` carrying the path and a reason,
and the batch iterator keeps going, so one corrupt photo never stops a 100k-image run.

Accepted inputs (alone or in a list, freely mixed):
- ``str`` / ``Path``: an image file, or a folder expanded to its image files (sorted; recursive
  on request; dotfiles such as macOS ``._x.jpg`` are skipped);
- ``PIL.Image.Image``: any mode; EXIF orientation is applied;
- ``numpy.ndarray``: HxW, HxWxC or CxHxW, uint8 / uint16 / bool / float in [0, 1] or [0, 255];
  a 4-D array is a batch of images;
- ``torch.Tensor``: floating point [3,H,W] or [B,3,H,W] is taken as ALREADY PREPROCESSED and passed
  through untouched; uint8 tensors are raw pixels ([C,H,W] or [B,C,H,W]) and get preprocessed.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geoalign.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .bmp .gif .tif .tiff .ppm .pgm .pbm .pnm".split()
)
"""Extensions picked up when a folder is expanded (compared case-insensitively)."""

DEFAULT_MAX_PIXELS = 2 * 89_478_485
"""Decompression-bomb guard: the pixel count at which Pillow itself refuses to open an image.

A larger `max_pixels` also needs `PIL.Image.MAX_IMAGE_PIXELS` raised, since Pillow checks first."""

ImageInput = str | os.PathLike | Image.Image | np.ndarray | Tensor


class ImageLoadError(DataError):
    """One image could not be used. `path` names it (or describes an in-memory input)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


# ----------------------------------------------------------------------------- paths and folders


def expand_image_paths(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], *, recursive: bool = False
) -> list[Path]:
    """Files stay as given (checked when loaded); folders become their sorted image files.

    Raises DataError for a folder without image files, since that is almost always a wrong
    path or a missing ``recursive=True``.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            paths.extend(_folder_images(path, recursive))
        else:
            paths.append(path)
    return paths


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    found = sorted(
        p
        for p in folder.glob(pattern)
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.is_file() or p.is_symlink())  # a broken link is listed, then reported as broken
    )
    if not found:
        hint = "" if recursive else " (images in sub-folders are only found with recursive=True)"
        raise DataError(
            f"{folder}: folder contains no image files with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}{hint}"
        )
    return found


# ----------------------------------------------------------------------------- decoding


def load_image(source: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any single raw image input -> RGB 8-bit PIL image (EXIF orientation applied).

    Raises ImageLoadError naming the file and the reason. Float tensors are preprocessed pixels,
    not images, and are rejected here (batch functions pass them through instead).
    """
    if isinstance(source, str | os.PathLike):
        return _open_file(Path(source), max_pixels)
    if isinstance(source, Image.Image):
        return _finish(source, "<PIL image>", max_pixels)
    if isinstance(source, np.ndarray):
        return array_to_pil(source, name="<array>")
    if isinstance(source, Tensor):
        if source.is_floating_point():
            raise ImageLoadError(
                "<tensor>",
                "floating-point tensors are taken as preprocessed pixel values, not images",
            )
        array = source.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        return array_to_pil(array, name="<tensor>")
    raise ImageLoadError(repr(type(source)), "unsupported input type")


def _open_file(path: Path, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        if path.is_symlink():
            try:
                os.stat(path)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise ImageLoadError(
                        path, "symbolic link loop (it points back to itself)"
                    ) from None
            target = os.readlink(path)
            raise ImageLoadError(path, f"broken symbolic link: its target {target} does not exist")
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a folder, not an image file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageLoadError(path, f"cannot read: {err.strerror or err}") from err
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's warning-level guard
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        try:
            _check_pixels(path, image.size, max_pixels)  # before decoding: only the header is read
            image.load()
            result = _finish(image, str(path), max_pixels)
            return image.copy() if result is image else result  # `image` is closed below
        finally:
            image.close()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(
            path,
            f"decompression-bomb guard: {err} (if the image is genuine, raise both "
            "PIL.Image.MAX_IMAGE_PIXELS and max_pixels)",
        ) from err
    except UnidentifiedImageError as err:
        with open(path, "rb") as handle:
            head = handle.read(16)
        raise ImageLoadError(
            path, f"not a recognised image format (file starts with {head!r})"
        ) from err
    except OSError as err:
        message = str(err)
        if "truncated" in message.lower():
            raise ImageLoadError(path, f"truncated image data ({message})") from err
        raise ImageLoadError(path, f"corrupt or unreadable image ({message})") from err
    except (
        Exception
    ) as err:  # Pillow raises many types for corrupt data (SyntaxError, ValueError, ...)
        raise ImageLoadError(path, f"corrupt image ({type(err).__name__}: {err})") from err


def decode_jpeg(data: bytes, name: str, *, device: torch.device | str = "cpu") -> Tensor:
    """JPEG bytes -> uint8 RGB [3, H, W] on `device` (nvJPEG when it is a CUDA device).

    The GPU decode path for large extractions: decoding moves off the CPU cores, and the tensor
    transform then runs on the GPU too. Unlike `load_image` it applies no EXIF orientation or ICC
    profile, and IDCT rounding differs from Pillow's by a level or two. Data that is not JPEG is
    decoded by Pillow (as `load_image` would) and moved to `device`.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"GPU JPEG decoding needs a CUDA device; none is visible here ({name})")
    if not data.startswith(b"\xff\xd8"):
        from torchvision.transforms.v2.functional import pil_to_tensor

        image = load_image(Image.open(io.BytesIO(data)))
        return pil_to_tensor(image).to(device)
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if device.type == "cuda":
        # nvJPEG writes its output on a stream of its own, not ordered after the caller's
        # (pytorch/vision#9606, in torchvision 0.29): a block freed while queued kernels still
        # read it (a transform's temporaries, a training step's) can be handed to the decoder
        # and overwritten before they run. Nothing queued, nothing to overwrite.
        torch.cuda.current_stream(device).synchronize()
    try:
        return tv_decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        raise ImageLoadError(name, f"undecodable JPEG ({str(err).splitlines()[0]})") from err


def _check_pixels(name: str | Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"decompression-bomb guard: {width}x{height} = {width * height:,} pixels is above the "
            f"limit of {max_pixels:,} (raise max_pixels if the image is genuine)",
        )


def _finish(image: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    _check_pixels(name, image.size, max_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as err:  # a broken EXIF block should not cost us the pixels
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({err})", stacklevel=3)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK via its ICC.

    Pillow's own ``convert("RGB")`` clips 16-bit values instead of scaling them and drops alpha
    onto black, which is why those modes are handled here.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image), mode), mode="L").convert(
            "RGB"
        )
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK" and image.info.get("icc_profile"):
        try:
            return _icc_to_srgb(image)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # broken profile: fall back to Pillow's naive conversion
    return image.convert("RGB")


def _icc_to_srgb(image: Image.Image) -> Image.Image:
    import io

    source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
    srgb = ImageCms.createProfile("sRGB")
    return ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")


def _high_depth_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (I;16*), 32-bit int (I, as 16-bit PNG/TIFF decode) and float (F) -> uint8."""
    array = array.astype(np.float64)
    if mode == "F":
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.round(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
    return np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8)  # 65535 / 257 = 255


def array_to_pil(array: np.ndarray, *, name: str = "<array>") -> Image.Image:
    """HxW / HxWxC / CxHxW array in a common dtype -> RGB 8-bit PIL image."""
    if array.ndim == 3 and array.shape[-1] > 4 and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            name, f"array of shape {array.shape} is not HxW, HxWx{{1,3,4}} or {{1,3,4}}xHxW"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(name, f"array of shape {array.shape} has no pixels")
    pixels = _array_to_uint8(np.ascontiguousarray(array), name)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[-1] if pixels.ndim == 3 else 2]
    return to_rgb(Image.fromarray(pixels, mode=mode))


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(name, "float array contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
        raise ImageLoadError(
            name, f"float array values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]"
        )
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if array.dtype == np.uint16 or (low >= 0 and 255 < high <= 65535):
            return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        raise ImageLoadError(name, f"integer array values span [{low}, {high}]; expected 0..65535")
    raise ImageLoadError(name, f"unsupported array dtype {array.dtype}")


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class ImageSource:
    """One input after expansion: what to load and how to name it in messages."""

    index: int
    name: str
    value: Any


def expand_inputs(
    inputs: ImageInput | Iterable[ImageInput], *, recursive: bool = False
) -> list[ImageSource]:
    """Flatten inputs to one entry per image, in order: folders expand, 4-D batches split."""
    if isinstance(inputs, str | os.PathLike | Image.Image | np.ndarray | Tensor):
        inputs = [inputs]
    sources: list[ImageSource] = []

    def add(name: str, value: Any) -> None:
        sources.append(ImageSource(len(sources), name, value))

    for position, item in enumerate(inputs):
        if isinstance(item, str | os.PathLike):
            for path in expand_image_paths(item, recursive=recursive):
                add(str(path), path)
        elif isinstance(item, Image.Image):
            add(f"<PIL image #{position}>", item)
        elif isinstance(item, np.ndarray | Tensor) and item.ndim == 4:
            for row in range(item.shape[0]):
                add(f"<{type(item).__name__} #{position}[{row}]>", item[row])
        elif isinstance(item, np.ndarray | Tensor):
            add(f"<{type(item).__name__} #{position}>", item)
        else:
            add(f"<{type(item).__name__} #{position}>", item)  # rejected with a reason when loaded
    return sources


def prepare_image(
    source: ImageSource,
    transform: Callable[[Image.Image], Tensor],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Tensor:
    """Load and preprocess one input; float tensors are already preprocessed and pass through."""
    value = source.value
    if isinstance(value, Tensor) and value.is_floating_point():
        if value.ndim != 3:
            raise ImageLoadError(
                source.name, f"preprocessed tensor must be [C,H,W], got {tuple(value.shape)}"
            )
        return value
    try:
        image = load_image(value, max_pixels=max_pixels)
    except ImageLoadError as err:
        if isinstance(value, Path):
            raise
        raise ImageLoadError(source.name, err.reason) from err
    try:
        return transform(image)
    except Exception as err:  # one bad image (e.g. 1x1 pixel) must not stop the batch
        raise ImageLoadError(
            source.name, f"preprocessing failed ({type(err).__name__}: {err})"
        ) from err


@dataclass
class ImageBatch:
    """Successfully preprocessed images of one batch plus the failures met on the way.

    `pixel_values` is None when every image of the batch failed. `indices` are positions in the
    expanded input list (see `expand_inputs`), so results can be matched back to inputs.
    """

    pixel_values: Tensor | None
    indices: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> ImageBatch:
        """Pixels in page-locked memory (DataLoader(pin_memory=True) calls this for custom
        batches): the copy to a GPU can then run asynchronously."""
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        return self


class ImageInputDataset(Dataset):
    """Map-style dataset over expanded inputs; items are (source, tensor or None, error or None).

    Failures are returned, not raised, so a DataLoader with workers keeps going.
    """

    def __init__(
        self,
        sources: list[ImageSource],
        transform: Callable[[Image.Image], Tensor],
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.sources = sources
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[ImageSource, Tensor | None, ImageLoadError | None]:
        source = self.sources[i]
        try:
            return source, prepare_image(source, self.transform, max_pixels=self.max_pixels), None
        except ImageLoadError as err:
            return source, None, err


def collate_images(
    items: list[tuple[ImageSource, Tensor | None, ImageLoadError | None]],
) -> ImageBatch:
    """Stack the successes; an image whose tensor shape differs from the batch's is an error."""
    batch = ImageBatch(pixel_values=None)
    good = [(source, tensor) for source, tensor, _ in items if tensor is not None]
    batch.errors.extend(err for _, _, err in items if err is not None)
    if good:
        shape = Counter(tuple(t.shape) for _, t in good).most_common(1)[0][0]
        kept = []
        for source, tensor in good:
            if tuple(tensor.shape) == shape:
                kept.append(tensor)
                batch.indices.append(source.index)
                batch.names.append(source.name)
            else:
                batch.errors.append(
                    ImageLoadError(
                        source.name,
                        f"tensor shape {tuple(tensor.shape)} differs from the batch's {shape}",
                    )
                )
        batch.pixel_values = torch.stack(kept)
    return batch


def iter_image_batches(
    inputs: ImageInput | Iterable[ImageInput],
    transform: Callable[[Image.Image], Tensor],
    *,
    batch_size: int = 32,
    recursive: bool = False,
    num_workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    pin_memory: bool = False,
) -> Iterator[ImageBatch]:
    """Preprocess inputs in batches; per-file failures ride along in `ImageBatch.errors`.

    With `num_workers` > 0, decoding and preprocessing run in DataLoader worker processes.
    """
    dataset = ImageInputDataset(
        expand_inputs(inputs, recursive=recursive), transform, max_pixels=max_pixels
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
    )
    yield from loader
