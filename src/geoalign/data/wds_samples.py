"""Reading webdataset samples: members grouped by key, coordinates parsed, images decoded.

A shard is a tar of samples; the members of one sample share a key (`000123.jpg`,
`000123.json`). A sample holds one image (`jpg`, `jpeg`, `png` or `webp`) and its coordinates,
either as JSON with lat/lon under a common name (`lat`/`lon`, `latitude`/`longitude`, `LAT`/`LON`,
`lng`) or as text `lat,lon` / `lat lon`. A sample without an image or with missing or invalid
coordinates becomes a `BadSample` (key, shard, reason) that readers count and report.

`WdsReader` streams (image, lat, lon, key) from shards (what training from images reads).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from geoalign.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, _check_pixels, _finish
from geoalign.data.wds_specs import IMAGE_FIELDS, LAT_NAMES, LON_NAMES, _wds, expand_shards
from geoalign.errors import DataError
from geoalign.geo.coords import check_coordinates


@dataclass(frozen=True)
class BadSample:
    """A sample that cannot be used, and why (reported, never silently dropped)."""

    url: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.url}: sample {self.key!r}: {self.reason}"


@dataclass
class WdsSample:
    """One usable sample: the decoded RGB image and its coordinates."""

    image: Image.Image
    lat: float
    lon: float
    key: str
    url: str = ""


def _raw_samples(url: str, *, images: bool = True) -> Iterator[dict[str, Any]]:
    """Samples of one shard as webdataset groups them (member suffix -> bytes).

    images=False skips reading image bytes (tar members are stepped over), for listing passes.
    """
    tariterators = _wds().tariterators
    base_plus_ext, tarfile_samples = tariterators.base_plus_ext, tariterators.tarfile_samples

    def keep(name: str) -> bool:
        _, suffix = base_plus_ext(name)
        return suffix is not None and (images or suffix.lower() not in IMAGE_FIELDS)

    def reraise(err: Exception) -> bool:
        raise DataError(f"{url}: cannot read shard ({type(err).__name__}: {err})") from err

    if images:
        yield from tarfile_samples([{"url": url}], handler=reraise)
        return
    # Listing: image members are still named (so a missing image is reported) but not read.
    group_by_keys, url_opener = tariterators.group_by_keys, tariterators.url_opener

    for stream in url_opener([{"url": url}], handler=reraise):
        fileobj = stream["stream"]
        try:
            tar = tarfile.open(fileobj=fileobj, mode="r|*")
            files = []
            for info in tar:
                if not info.isreg() or not (keep(info.name) or _is_image(info.name)):
                    continue
                data = tar.extractfile(info).read() if keep(info.name) else b""
                files.append({"fname": info.name, "data": data, "__url__": url})
                tar.members = []
        except (tarfile.TarError, OSError) as err:
            reraise(err)
        finally:
            close = getattr(fileobj, "close", None)
            if close:
                close()
        yield from group_by_keys(iter(files), handler=reraise)


def _is_image(name: str) -> bool:
    _, suffix = _wds().tariterators.base_plus_ext(name)
    return suffix is not None and suffix.lower() in IMAGE_FIELDS


def image_field(sample: dict[str, Any]) -> str | None:
    """The member holding the sample's image, or None."""
    return next((f for f in IMAGE_FIELDS if f in sample), None)


def _pick(record: dict[str, Any], names: tuple[str, ...]) -> Any:
    lowered = {str(k).lower(): v for k, v in record.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def sample_coords(sample: dict[str, Any]) -> tuple[float, float]:
    """(lat, lon) of a raw sample; raises ValueError with the reason when missing or invalid."""
    if "json" in sample:
        try:
            record = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"json member is not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise ValueError("json member is not an object with lat/lon")
        lat, lon = _pick(record, LAT_NAMES), _pick(record, LON_NAMES)
        if lat is None or lon is None:
            raise ValueError(
                f"json has no lat/lon (fields: {', '.join(map(str, record)) or 'none'}); "
                "expected lat/lon, latitude/longitude or LAT/LON"
            )
    elif "txt" in sample:
        parts = sample["txt"].decode("utf-8", "replace").replace(",", " ").split()
        if len(parts) != 2:
            raise ValueError(f"txt member is not 'lat,lon': {sample['txt'][:40]!r}")
        lat, lon = parts
    else:
        raise ValueError("no coordinates (no .json or .txt member)")
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError) as err:
        raise ValueError(f"coordinates are not numbers: lat={lat!r}, lon={lon!r}") from err
    # the table rule of a manifest's columns (geo.coords): a 0-360 longitude is wrapped
    check = check_coordinates([lat], [lon])
    errors = check.errors()
    if errors:
        raise ValueError(f"coordinates out of range: {errors[1]}")
    return float(check.lat[0]), float(check.lon[0])


def decode_image(
    data: bytes, name: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Image bytes -> RGB 8-bit PIL image, exactly as `load_image` decodes the same file."""
    if not data:
        raise ImageLoadError(name, "empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        _check_pixels(name, image.size, max_pixels)
        image.load()
        result = _finish(image, name, max_pixels)
        return image.copy() if result is image else result
    except ImageLoadError:
        raise
    except UnidentifiedImageError as err:  # its text holds a memory address: not reproducible
        raise ImageLoadError(
            name, f"undecodable image: not a recognised format (data starts with {data[:16]!r})"
        ) from err
    except Exception as err:  # Pillow raises many types for corrupt data
        raise ImageLoadError(name, f"undecodable image ({type(err).__name__}: {err})") from err


def check_sample(sample: dict[str, Any]) -> tuple[str, float, float]:
    """(image field, lat, lon) of a raw sample, or ValueError naming what is wrong."""
    field_name = image_field(sample)
    if field_name is None:
        have = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"no image member (jpg/jpeg/png/webp); members: {', '.join(have)}")
    lat, lon = sample_coords(sample)
    return field_name, lat, lon


class WdsReader:
    """Iterate usable samples of shards as `WdsSample`; bad ones land in `.bad` with the reason.

    `rank`/`world_size` take every world_size-th shard (disjoint per process); training uses
    one reader per data-parallel rank (and per DataLoader worker: pass the worker's global id).
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        rank: int = 0,
        world_size: int = 1,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.urls = expand_shards(shards)[rank::world_size]
        self.max_pixels = max_pixels
        self.bad: list[BadSample] = []
        self.n_ok = 0

    def __iter__(self) -> Iterator[WdsSample]:
        self.bad, self.n_ok = [], 0
        for url in self.urls:
            for raw in _raw_samples(url):
                key = raw["__key__"]
                try:
                    name, lat, lon = check_sample(raw)
                    image = decode_image(raw[name], f"{url}#{key}", max_pixels=self.max_pixels)
                except (ValueError, ImageLoadError) as err:
                    reason = err.reason if isinstance(err, ImageLoadError) else str(err)
                    self.bad.append(BadSample(url, key, reason))
                    continue
                self.n_ok += 1
                yield WdsSample(image, lat, lon, key, url)

    def report(self) -> str:
        """One line: usable and bad samples, with the first bad ones named."""
        text = f"{self.n_ok} samples read, {len(self.bad)} bad"
        if self.bad:
            text += "; e.g. " + "; ".join(str(b) for b in self.bad[:3])
        return text
