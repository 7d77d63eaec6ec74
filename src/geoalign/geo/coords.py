"""Validation and normalisation of latitude/longitude data.

Every entry point that accepts coordinates goes through here, so a bad value is reported once, with
its index, instead of surfacing later as a NaN embedding or a wrong distance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from geoalign.errors import CoordinateError

if TYPE_CHECKING:  # torch is imported lazily: CLI commands that only need numpy start fast
    import torch


def wrap_longitude(lon: np.ndarray) -> np.ndarray:
    """Wrap longitudes to [-180, 180); 180 becomes -180 (the same meridian).

    In-range values are returned untouched: (x + 180) % 360 - 180 would perturb their last bit.
    """
    lon = np.asarray(lon, dtype=np.float64)
    out = lon.copy()
    outside = (lon < -180.0) | (lon >= 180.0)
    out[outside] = (lon[outside] + 180.0) % 360.0 - 180.0
    return out


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_latlon(
    lat: Any, lon: Any, *, source: str = "input", wrap: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Check lat/lon arrays and return them as float64, longitudes wrapped to [-180, 180).

    Raises CoordinateError naming the first offending index and how many others are bad.
    """
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise CoordinateError(f"{source}: {lat.size} latitudes but {lon.size} longitudes")
    checks = (
        (~np.isfinite(lat), "latitude is not a finite number", lat),
        (~np.isfinite(lon), "longitude is not a finite number", lon),
        (np.abs(np.nan_to_num(lat)) > 90.0, "latitude outside [-90, 90]", lat),
    )
    for mask, reason, values in checks:
        if mask.any():
            i = _first_bad(mask)
            more = int(mask.sum()) - 1
            extra = f" ({more} more bad values)" if more else ""
            raise CoordinateError(f"{source}: index {i}: {reason}: {values[i]!r}{extra}")
    return lat, (wrap_longitude(lon) if wrap else lon)


def as_latlon_array(x: Any, *, source: str = "input", wrap: bool = True) -> np.ndarray:
    """Validate an (N, 2) lat/lon array-like (numpy, torch, list) into a float64 numpy array."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise CoordinateError(
            f"{source}: expected an (N, 2) array of lat, lon; got shape {arr.shape}"
        )
    lat, lon = validate_latlon(arr[:, 0], arr[:, 1], source=source, wrap=wrap)
    return np.stack([lat, lon], axis=1)


def as_latlon_tensor(
    x: Any,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    source: str = "input",
) -> torch.Tensor:
    """Validate (N, 2) lat/lon into a tensor; validation runs in float64 on the CPU copy."""
    import torch

    if dtype is None:
        dtype = torch.float32
    if isinstance(x, torch.Tensor):
        device = device if device is not None else x.device
    return torch.as_tensor(as_latlon_array(x, source=source), dtype=dtype, device=device)
