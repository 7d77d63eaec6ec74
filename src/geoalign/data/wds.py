"""Webdataset tar shards: the form large geo-localization sets ship in (OSV-5M, MP-16 tars).

A shard is a tar of samples; the members of one sample share a key (`000123.jpg`,
`000123.json`). A sample holds one image (`jpg`, `jpeg`, `png` or `webp`) and its coordinates,
either as JSON with lat/lon under a common name (`lat`/`lon`, `latitude`/`longitude`, `LAT`/`LON`,
`lng`) or as text `lat,lon` / `lat lon`. Shards are read with the `webdataset` library, so a
spec may be a local path, a brace pattern (`data/{000000..000010}.tar`), a folder of `.tar`
files, or any URL / `pipe:` form the library opens.

Bad samples are never dropped silently: a sample without an image or with missing or invalid
coordinates becomes a `BadSample` (key, shard, reason) that readers count and report, and an
image that does not decode is a per-row failure of the feature store.

- `WdsReader`: stream (image, lat, lon, key) from shards (training from images plugs in here).
- `list_shards`: one pass over the shards without decoding images -> a `ShardManifest`, the
  row listing `features extract` runs on (with `ShardImageLoader` reading the images back).
- `write_shards`: a manifest plus its image files -> shards (`geoalign data to-wds`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import tarfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from geoalign.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    _check_pixels,
    _finish,
    decode_jpeg,
)
from geoalign.errors import DataError
from geoalign.io_atomic import atomic_write

IMAGE_FIELDS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Sample members taken as the image, first present wins."""
COORD_FIELDS: tuple[str, ...] = ("json", "txt")
LAT_NAMES: tuple[str, ...] = ("lat", "latitude")
LON_NAMES: tuple[str, ...] = ("lon", "longitude", "lng", "long")
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")


# ----------------------------------------------------------------------------- shard specs


def _wds() -> Any:
    """The webdataset package, or a one-line error saying how to install it."""
    try:
        import webdataset
    except ImportError as err:
        raise DataError(
            "reading webdataset shards needs the webdataset package: pip install 'geoalign[scale]'"
        ) from err
    return webdataset


def is_shard_spec(spec: str | os.PathLike) -> bool:
    """True when `spec` names shards (tar path, brace pattern, URL, pipe or folder of tars)."""
    text = str(spec)
    if text.startswith("pipe:") or "://" in text:
        return True
    if text.endswith(SHARD_SUFFIXES) or text.split("::")[0].endswith(SHARD_SUFFIXES):
        return True
    path = Path(text)
    return path.is_dir() and any(p.name.endswith(SHARD_SUFFIXES) for p in path.iterdir())


def expand_shards(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs in order: braces and `::` lists expanded, folders listed (sorted).

    Local shards must exist (one clear error naming the first missing one); URLs and pipes are
    passed to webdataset as they are.
    """
    expand_urls = _wds().shardlists.expand_urls
    if isinstance(specs, str | os.PathLike):
        specs = [specs]
    urls: list[str] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES))
            if not found:
                raise DataError(f"{path}: folder holds no .tar shards")
            urls.extend(found)
            continue
        for url in expand_urls(text):
            if not (url.startswith("pipe:") or "://" in url) and not Path(url).is_file():
                raise DataError(f"{url}: shard not found (from {text!r}); check the path/pattern")
            urls.append(url)
    if not urls:
        raise DataError(f"{specs!r}: names no shards")
    return urls


# ----------------------------------------------------------------------------- samples


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
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        raise ValueError(f"coordinates out of range: lat={lat}, lon={lon}")
    return lat, lon


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


# ----------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ShardRef:
    """Where one row's image lives: the shard, the sample's ordinal in it, its key."""

    url: str
    ordinal: int
    key: str

    def __str__(self) -> str:
        return f"{self.url}#{self.key}"


@dataclass
class ShardManifest:
    """Usable samples of shards as manifest rows (the interface `extract_features` reads).

    Row i is the i-th usable sample in shard order; `bad` lists the samples left out and why.
    """

    refs: list[ShardRef]
    lat: np.ndarray
    lon: np.ndarray
    bad: list[BadSample] = field(default_factory=list)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def images(self) -> np.ndarray:
        return np.asarray([r.key for r in self.refs], dtype=object)

    @property
    def rows(self) -> np.ndarray:
        """1-based row numbers (position + 1), as manifests number their data rows."""
        return np.arange(1, len(self.refs) + 1, dtype=np.int64)

    def coords(self) -> np.ndarray:
        return np.stack([self.lat, self.lon], axis=1).astype(np.float64).reshape(-1, 2)

    def paths(self) -> list[ShardRef]:
        return list(self.refs)

    def content_hash(self) -> str:
        """Hash of shard names, keys and coordinates: a resumed store must list the same rows."""
        h = hashlib.sha256()
        for r in self.refs:
            h.update(f"{Path(r.url).name}\0{r.key}\0".encode())
        h.update(self.coords().tobytes())
        return h.hexdigest()[:16]


def _list_one(url: str) -> dict[str, Any]:
    good: list[list[Any]] = []
    bad: list[list[str]] = []
    for ordinal, raw in enumerate(_raw_samples(url, images=False)):
        try:
            _, lat, lon = check_sample(raw)
        except ValueError as err:
            bad.append([raw["__key__"], str(err)])
            continue
        good.append([ordinal, raw["__key__"], lat, lon])
    return {"good": good, "bad": bad}


def _cache_name(url: str) -> str | None:
    """Cache file of a local shard's listing (keyed by path, size and mtime); None for URLs."""
    if url.startswith("pipe:") or "://" in url:
        return None
    st = Path(url).stat()
    tag = f"{Path(url).resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(tag.encode()).hexdigest()[:24] + ".json"


def list_shards(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    cache_dir: str | Path | None = None,
    start: int = 0,
) -> ShardManifest:
    """List the usable samples of shards without decoding images (one streaming pass).

    With `cache_dir`, each local shard's listing is kept there, so a resumed run, or the other
    ranks of a distributed one, read each shard's listing instead of the shard. `start` is the
    shard to list first (ranks start at different shards, so they share the listing work).
    """
    urls = expand_shards(shards)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    listings: dict[int, dict[str, Any]] = {}
    order = list(range(len(urls)))
    order = order[start % max(len(urls), 1) :] + order[: start % max(len(urls), 1)]
    for i in order:
        name = _cache_name(urls[i]) if cache is not None else None
        if name is not None and (cache / name).is_file():
            try:
                listings[i] = json.loads((cache / name).read_text())
                continue
            except ValueError:
                pass  # a torn cache file is simply redone
        listings[i] = _list_one(urls[i])
        if name is not None:
            text = json.dumps(listings[i]).encode()
            atomic_write(cache / name, lambda fh, t=text: fh.write(t), durable=False)
    refs: list[ShardRef] = []
    lat: list[float] = []
    lon: list[float] = []
    bad: list[BadSample] = []
    for i, url in enumerate(urls):
        for ordinal, key, la, lo in listings[i]["good"]:
            refs.append(ShardRef(url, int(ordinal), str(key)))
            lat.append(la)
            lon.append(lo)
        bad.extend(BadSample(url, key, reason) for key, reason in listings[i]["bad"])
    source = str(shards) if isinstance(shards, str | os.PathLike) else " ".join(map(str, shards))
    return ShardManifest(refs, np.asarray(lat), np.asarray(lon), bad, source)


class ShardImageLoader:
    """load_fn for `extract_features` over a `ShardManifest`: ShardRef -> decoded image.

    Rows are asked for in shard order, so one open stream per shard is read forward; samples
    read past while another thread waits for an earlier one are held until asked for. Decoding
    runs outside the lock, so decode threads work in parallel.
    """

    def __init__(
        self, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode_device: str | None = None
    ) -> None:
        self.max_pixels = max_pixels
        self.decode_device = decode_device  # "cuda": JPEGs decoded by nvJPEG (decode_jpeg)
        self._lock = threading.Lock()
        self._url: str | None = None
        self._iter: Iterator[dict[str, Any]] | None = None
        self._next = 0
        self._held: dict[int, bytes] = {}

    def _bytes(self, ref: ShardRef) -> bytes:
        with self._lock:
            if ref.url == self._url and ref.ordinal in self._held:
                return self._held.pop(ref.ordinal)
            if ref.url != self._url or ref.ordinal < self._next:
                self._url, self._iter, self._next = ref.url, _raw_samples(ref.url), 0
                self._held = {}
            assert self._iter is not None
            for raw in self._iter:
                ordinal = self._next
                self._next += 1
                name = image_field(raw)
                data = raw[name] if name else b""
                if ordinal == ref.ordinal:
                    if raw["__key__"] != ref.key:
                        raise DataError(
                            f"{ref.url}: sample {ordinal} is {raw['__key__']!r}, the listing "
                            f"says {ref.key!r}; the shard changed since it was listed"
                        )
                    return data
                if len(self._held) < 4096:
                    self._held[ordinal] = data
            raise DataError(f"{ref.url}: shard ended before sample {ref.ordinal} ({ref.key!r})")

    def __call__(self, ref: ShardRef) -> Any:
        if self.decode_device is not None:
            return decode_jpeg(self._bytes(ref), str(ref), device=self.decode_device)
        return decode_image(self._bytes(ref), str(ref), max_pixels=self.max_pixels)


# ----------------------------------------------------------------------------- writing

WRITE_STATE = ".to-wds.json"
_SUFFIX_FIELD = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class WriteResult:
    """What `write_shards` did: shard files written now and kept from an earlier run."""

    shards: list[Path]
    written: int
    kept: int
    rows: int


def _shard_bytes(manifest: Any, start: int, stop: int) -> bytes:
    """One tar of rows [start, stop): image bytes as stored (no re-encoding) plus a json."""
    buf = io.BytesIO()
    coords = manifest.coords()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(start, stop):
            path = manifest.path(i)
            kind = _SUFFIX_FIELD.get(path.suffix.lower())
            if kind is None:
                raise DataError(
                    f"{path}: row {manifest.rows[i]}: .{path.suffix.lstrip('.')} images are not "
                    "a webdataset image type; convert them to jpg, png or webp first"
                )
            key = f"{int(manifest.rows[i]):09d}"
            meta = {"lat": float(coords[i, 0]), "lon": float(coords[i, 1])}
            meta["image"] = str(manifest.images[i])
            for name, data in (
                (f"{key}.{kind}", path.read_bytes()),
                (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_shards(
    manifest: Any,
    out_dir: str | Path,
    *,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = False,
) -> WriteResult:
    """Write a manifest's images and coordinates as webdataset shards `000000.tar`, ...

    Shard k holds rows [k*shard_size, (k+1)*shard_size); sample keys are the manifest row
    numbers (`000000042`), and each json records lat, lon and the original image path. Every
    shard is written to a hidden temporary file and renamed into place, so a killed run leaves
    whole shards; a rerun with the same manifest and shard size keeps them and writes the rest.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {"manifest_hash": manifest.content_hash(), "shard_size": int(shard_size)}
    state_path = out / WRITE_STATE
    if state_path.is_file() and not overwrite:
        have = json.loads(state_path.read_text())
        for key, value in state.items():
            if have.get(key) != value:
                raise DataError(
                    f"{out}: shards there were written with {key}={have.get(key)!r}, this run "
                    f"has {value!r}; use a new folder or --overwrite"
                )
    elif overwrite:
        for p in out.iterdir():
            if p.name.endswith(".tar") and p.name[:-4].isdigit():
                p.unlink()
    text = json.dumps(state, sort_keys=True).encode()
    atomic_write(state_path, lambda fh: fh.write(text))
    n = len(manifest)
    n_shards = math.ceil(n / shard_size)
    paths, written = [], 0
    for k in range(n_shards):
        path = out / f"{k:06d}.tar"
        paths.append(path)
        if path.is_file():
            continue
        data = _shard_bytes(manifest, k * shard_size, min((k + 1) * shard_size, n))
        atomic_write(path, lambda fh, d=data: fh.write(d))
        written += 1
        if progress:
            print(f"wrote {path} (shard {k + 1} of {n_shards})", file=sys.stderr)
    return WriteResult(paths, written, n_shards - written, n)
