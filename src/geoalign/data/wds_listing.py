"""Listing shards: their usable samples as manifest rows, without decoding an image.

`list_shards` makes one pass over the shards -> a `ShardManifest`, the row listing
`features extract` runs on, with `ShardImageLoader` reading the images back in row order.
Listings of local shards can be cached, so resumed runs and other ranks do not re-read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.data.images import DEFAULT_MAX_PIXELS, decode_jpeg
from geoalign.data.wds_samples import (
    BadSample,
    _raw_samples,
    check_sample,
    decode_image,
    image_field,
)
from geoalign.data.wds_specs import expand_shards
from geoalign.errors import DataError
from geoalign.io_atomic import atomic_write


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
