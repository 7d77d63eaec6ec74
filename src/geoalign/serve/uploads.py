"""Uploaded bytes -> pixels, with the pixel limit checked before anything is decoded.

The bytes never touch the filesystem under a client-given name: Pillow reads them from memory.
EXIF GPS is read by `geoalign.inference.verify.exif_gps_from_image`, the parser `geoalign
verify` uses too.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from geoalign.data.images import ImageLoadError, load_image
from geoalign.errors import DataError
from geoalign.inference.verify import exif_gps_from_image


@dataclass
class Decoded:
    """One uploaded image: its preprocessed pixels, or why it could not be read; its EXIF GPS
    (lat, lon), or why there is none."""

    name: str
    pixels: torch.Tensor | None = None
    error: str | None = None
    exif_gps: tuple[float, float] | None = None
    exif_error: str | None = None


def decode_upload(data: bytes, name: str, transform, max_pixels: int) -> Decoded:
    """Decode one upload and preprocess it with the backbone's `transform`.

    Runs in a worker thread (decoding is CPU work that must not block the event loop). Every
    failure becomes `error` (a one-line reason), never an exception."""
    out = Decoded(name)
    if not data:
        out.error = "empty file (0 bytes)"
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened:
            width, height = opened.size
            if width * height > max_pixels:
                out.error = (
                    f"{width}x{height} = {width * height:,} pixels is above the limit of "
                    f"{max_pixels:,} (decompression-bomb guard)"
                )
                return out
            try:
                out.exif_gps = exif_gps_from_image(opened, name)
            except DataError as err:
                out.exif_error = str(err)
            except Exception as err:  # a broken EXIF block must not cost us the pixels
                out.exif_error = f"{name}: unreadable EXIF ({type(err).__name__})"
            opened.load()
            image = load_image(opened, max_pixels=max_pixels)
            out.pixels = transform(image)
    except Image.DecompressionBombError as err:
        out.error = f"decompression-bomb guard: {err}"
    except UnidentifiedImageError:
        out.error = f"not a recognised image format (starts with {data[:12]!r})"
    except ImageLoadError as err:
        out.error = err.reason
    except OSError as err:
        text = str(err)
        kind = "truncated image data" if "truncated" in text.lower() else "corrupt image"
        out.error = f"{kind} ({text})"
    except Exception as err:  # Pillow raises many types on corrupt data
        out.error = f"corrupt image ({type(err).__name__}: {err})"
    return out
