"""Writing webdataset shards from a manifest and its image files (`geoalign data to-wds`)."""

from __future__ import annotations

import io
import json
import math
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoalign.errors import DataError
from geoalign.io_atomic import atomic_write

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
