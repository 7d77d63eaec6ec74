"""Shard specs: which tar files a path, brace pattern, folder, URL or pipe names.

Shards are opened with the `webdataset` library (an optional dependency, `geoalign[scale]`), so a
spec may be a local path, a brace pattern (`data/{000000..000010}.tar`), a folder of `.tar`
files, or any URL / `pipe:` form the library opens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoalign.errors import DataError

IMAGE_FIELDS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Sample members taken as the image, first present wins."""
COORD_FIELDS: tuple[str, ...] = ("json", "txt")
LAT_NAMES: tuple[str, ...] = ("lat", "latitude")
LON_NAMES: tuple[str, ...] = ("lon", "longitude", "lng", "long")
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")


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
