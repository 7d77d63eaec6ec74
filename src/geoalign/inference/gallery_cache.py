"""Gallery embeddings computed once per (location encoder, gallery) and kept on disk.

The official GeoCLIP code re-encodes its 100K gallery for every photo (~20 s on a CPU). The
embeddings depend only on the encoder's weights and the coordinates, so both are hashed into the
cache key: change either and the key changes; nothing stale is ever read.

A cache file is checked on every read (readable .npy, float32, (M, D) for this gallery and encoder,
all finite); a truncated, NaN-filled or wrong-shape file is a one-line warning and is rebuilt in
place, so a damaged cache never reaches a prediction. Writes are atomic (temp + fsync + rename).

Files are written in Fortran (column) order, which `np.load` reads without a copy into the
`feature_major` layout scoring uses; a row-order file (written before) is read, converted and
rewritten once.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from geoalign.io_atomic import atomic_write, remove_stale_temps
from geoalign.models.base import feature_major
from geoalign.nn.location_encoder import LocationEncoder
from geoalign.paths import cache_dir


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over parameter/buffer names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def coords_fingerprint(latlon: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(latlon, dtype=np.float64).tobytes()).hexdigest()


def read_cached(path: Path, rows: int, dim: int) -> tuple[np.ndarray | None, str | None]:
    """The cached (rows, dim) float32 array at `path`, or (None, why it cannot be used)."""
    try:
        # Read straight into memory: a copy out of a memory map would hold the file's pages and
        # the copy at once (twice the gallery in peak RSS).
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return None, f"unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
        return None, f"dtype {getattr(arr, 'dtype', type(arr).__name__)}, expected float32"
    if arr.shape != (rows, dim):
        return None, f"shape {arr.shape}, expected ({rows}, {dim})"
    bad = _count_nonfinite(arr)
    if bad:
        return None, f"{bad:,} NaN/inf values"
    return arr, None


def _count_nonfinite(arr: np.ndarray, rows: int = 8192) -> int:
    """NaN/inf entries, counted block by block in memory order: a whole-array mask would add a
    quarter of the gallery (51 MB for the 100K one) to the peak memory of every start-up."""
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        return _count_nonfinite(arr.T, max(1, rows * arr.shape[1] // max(arr.shape[0], 1)))
    return sum(int((~np.isfinite(arr[i : i + rows])).sum()) for i in range(0, len(arr), rows))


def gallery_embeddings(
    encoder: LocationEncoder,
    latlon: np.ndarray,
    *,
    batch_size: int = 4096,
    cache: bool = True,
    progress=None,
) -> torch.Tensor:
    """(M, D) float32 embeddings of the gallery (`feature_major`), read from the cache when
    present and sound."""
    path = cached_gallery_path(encoder, latlon)
    if cache and path.is_file():
        arr, why = read_cached(path, len(latlon), encoder.embed_dim)
        if arr is not None:
            emb = torch.from_numpy(arr)
            if arr.flags.f_contiguous:
                return feature_major(emb)
            emb = feature_major(emb)  # a row-order file (written before): rewritten once
            del arr
            _write(path, emb)
            return emb
        warnings.warn(f"gallery cache {path} is damaged ({why}): rebuilding it", stacklevel=2)
    param = next(encoder.parameters())
    coords = torch.tensor(
        latlon, dtype=torch.float32, device=param.device
    )  # (a copy: may be read-only)
    emb = encoder.encode(coords, batch_size=batch_size, progress=progress).float().cpu()
    emb = feature_major(emb)
    if cache:
        _write(path, emb)
    return emb


def _write(path: Path, emb: torch.Tensor) -> None:
    """Atomically save feature-major `emb` as a Fortran-order .npy (no copy of the data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    atomic_write(path, lambda fh: np.save(fh, emb.numpy()))


def cached_gallery_path(encoder: LocationEncoder, latlon: np.ndarray) -> Path:
    """Where this (encoder, gallery) pair's embeddings are cached."""
    key = hashlib.sha256(
        (module_fingerprint(encoder) + coords_fingerprint(latlon)).encode()
    ).hexdigest()[:24]
    return cache_dir() / "gallery-embeddings" / f"{key}.npy"
