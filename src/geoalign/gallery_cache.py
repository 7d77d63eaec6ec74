"""Gallery embeddings computed once per (location encoder, gallery) and kept on disk.

The official GeoCLIP code re-encodes its 100K gallery for every photo (~20 s on a CPU). The
embeddings depend only on the encoder's weights and the coordinates, so both are hashed into the
cache key: change either and the key changes; nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

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


def gallery_embeddings(
    encoder: LocationEncoder,
    latlon: np.ndarray,
    *,
    batch_size: int = 4096,
    cache: bool = True,
    progress=None,
) -> torch.Tensor:
    """(M, D) float32 embeddings of the gallery, read from the cache when present."""
    path = cached_gallery_path(encoder, latlon)
    if cache and path.is_file():
        # Read straight into memory: a copy out of a memory map would hold the file's pages and
        # the copy at once (twice the gallery in peak RSS).
        arr = np.load(path)
        if arr.shape[0] == len(latlon):
            return torch.from_numpy(arr)
    param = next(encoder.parameters())
    coords = torch.as_tensor(latlon, dtype=torch.float32, device=param.device)
    emb = encoder.encode(coords, batch_size=batch_size, progress=progress).float().cpu()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, emb.numpy())
        os.replace(tmp, path)
    return emb


def cached_gallery_path(encoder: LocationEncoder, latlon: np.ndarray) -> Path:
    """Where this (encoder, gallery) pair's embeddings are cached."""
    key = hashlib.sha256(
        (module_fingerprint(encoder) + coords_fingerprint(latlon)).encode()
    ).hexdigest()[:24]
    return cache_dir() / "gallery-embeddings" / f"{key}.npy"
