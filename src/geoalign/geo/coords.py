"""Validation and normalisation of latitude/longitude data: the one set of coordinate rules.

Every entry point that accepts coordinates goes through here, so a bad value is reported once, with
its index (arrays) or 1-based data row (tables), instead of surfacing later as a NaN embedding or a
wrong distance. Two forms share the rules:

- `check_coordinates`: columns of a user's table (manifest, gallery, cell build, location
  embedding), possibly text; reports every bad row with a reason code instead of raising;
- `validate_latlon` / `as_latlon_array` / `as_latlon_tensor`: arrays from code; raise on the first
  bad value.

The rules: a latitude or longitude must be a finite number, |latitude| <= 90. In a table, a
longitude in (180, 360] is read as the 0-360 convention and wrapped (a warning); beyond [-180, 360]
it is an error (likely swapped or scaled columns). Arrays from code wrap any finite longitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geoalign.errors import CoordinateError

if TYPE_CHECKING:  # torch and pandas are imported lazily: CLI commands that need numpy start fast
    import pandas as pd
    import torch

# Reason codes. Errors make a row unusable; a warning is fixed automatically but reported.
MISSING_COORDINATE = "missing_coordinate"
UNPARSEABLE_COORDINATE = "unparseable_coordinate"
NONFINITE_COORDINATE = "nonfinite_coordinate"
LATITUDE_OUT_OF_RANGE = "latitude_out_of_range"
LONGITUDE_OUT_OF_RANGE = "longitude_out_of_range"
LONGITUDE_WRAPPED = "longitude_wrapped"
COORDINATE_REASONS = frozenset(
    {
        MISSING_COORDINATE,
        UNPARSEABLE_COORDINATE,
        NONFINITE_COORDINATE,
        LATITUDE_OUT_OF_RANGE,
        LONGITUDE_OUT_OF_RANGE,
    }
)
_MISSING_TEXT = ["nan", "na", "n/a", "null", "none", "<na>"]


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
            raise CoordinateError(f"{source}: index {i}: {reason}: {float(values[i])!r}{extra}")
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


# --- table columns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordinateIssue:
    """One problem with one value. `index` is the 0-based position (data row = index + 1)."""

    index: int
    reason: str
    message: str
    severity: Literal["error", "warning"] = "error"


@dataclass
class CoordinateCheck:
    """Checked coordinate columns, position-aligned with the input.

    `lat` / `lon` are float64, longitudes in [-180, 180); each holds NaN where that value is bad
    (the other coordinate of the row is kept, so a report can still show it).
    """

    lat: np.ndarray
    lon: np.ndarray
    issues: list[CoordinateIssue]

    @property
    def good(self) -> np.ndarray:
        """Rows whose latitude and longitude are both usable."""
        return np.isfinite(self.lat) & np.isfinite(self.lon)

    def errors(self) -> dict[int, str]:
        """The first error of each bad row, keyed by 1-based data row (header not counted)."""
        out: dict[int, str] = {}
        for issue in sorted(self.issues, key=lambda i: i.index):
            if issue.severity == "error":
                out.setdefault(issue.index + 1, issue.message)
        return out


class _Raw:
    """The value as written, computed only for the values that are reported."""

    def __init__(self, series: pd.Series, text: np.ndarray | None) -> None:
        self._series, self._text = series, text

    def __getitem__(self, i: int) -> str:
        if self._text is not None:
            return str(self._text[i])
        return repr(float(self._series.iat[i]))


def _parse(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Raw]:
    """(values, missing, unparseable, raw values) of one coordinate column."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values).reshape(-1))
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        floats = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(floats)
        return floats, missing, np.zeros_like(missing), _Raw(series, None)
    if len(series):
        obj = series.astype(object).where(~series.isna().to_numpy(), "")
        raw = obj.map(str).str.strip().to_numpy(dtype=object)
    else:
        raw = np.array([], dtype=object)
    floats = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    lowered = pd.Series(raw, dtype=object).str.lower().to_numpy(dtype=object)
    missing = (raw == "") | np.isin(lowered, _MISSING_TEXT)
    return floats, missing, np.isnan(floats) & ~missing, _Raw(series, raw)


def check_coordinates(lat: Any, lon: Any) -> CoordinateCheck:
    """Check a table's latitude and longitude columns (numbers or text) value by value.

    Every problem becomes a `CoordinateIssue` (missing, not a number, infinite, latitude outside
    [-90, 90], longitude outside [-180, 360]); a longitude in (180, 360] is wrapped with a warning.
    Nothing raises: callers decide whether bad rows are fatal (`format_row_errors`).
    """
    lat_v, lat_missing, lat_bad, lat_raw = _parse(lat)
    lon_v, lon_missing, lon_bad, lon_raw = _parse(lon)
    if lat_v.shape != lon_v.shape:
        raise CoordinateError(f"{lat_v.size} latitudes but {lon_v.size} longitudes")
    issues: list[CoordinateIssue] = []
    for name, values, missing, bad, raw in (
        ("latitude", lat_v, lat_missing, lat_bad, lat_raw),
        ("longitude", lon_v, lon_missing, lon_bad, lon_raw),
    ):
        issues += [
            CoordinateIssue(int(i), MISSING_COORDINATE, f"{name} is missing (empty or NaN)")
            for i in np.flatnonzero(missing)
        ]
        issues += [
            CoordinateIssue(int(i), UNPARSEABLE_COORDINATE, f"{name} {raw[i]!r} is not a number")
            for i in np.flatnonzero(bad)
        ]
        issues += [
            CoordinateIssue(int(i), NONFINITE_COORDINATE, f"{name} {raw[i]!r} is infinite")
            for i in np.flatnonzero(np.isinf(values))
        ]
    with np.errstate(invalid="ignore"):
        lat_out = np.isfinite(lat_v) & (np.abs(lat_v) > 90.0)
        lon_out = np.isfinite(lon_v) & ((lon_v < -180.0) | (lon_v > 360.0))
        lon_wrap = np.isfinite(lon_v) & (lon_v > 180.0) & (lon_v <= 360.0)
        wrapped = wrap_longitude(lon_v)  # inf % 360 is NaN: those rows are errors already
    issues += [
        CoordinateIssue(
            int(i), LATITUDE_OUT_OF_RANGE, f"latitude {float(lat_v[i])!r} is outside [-90, 90]"
        )
        for i in np.flatnonzero(lat_out)
    ]
    issues += [
        CoordinateIssue(
            int(i),
            LONGITUDE_OUT_OF_RANGE,
            f"longitude {float(lon_v[i])!r} is outside [-180, 180] (and not a 0-360 longitude)",
        )
        for i in np.flatnonzero(lon_out)
    ]
    issues += [
        CoordinateIssue(
            int(i),
            LONGITUDE_WRAPPED,
            f"longitude {float(lon_v[i])!r} is in (180, 360]; read as {float(wrapped[i])!r}",
            severity="warning",
        )
        for i in np.flatnonzero(lon_wrap)
    ]
    ok_lat = np.isfinite(lat_v) & ~lat_out
    ok_lon = np.isfinite(lon_v) & ~lon_out
    return CoordinateCheck(
        lat=np.where(ok_lat, lat_v, np.nan), lon=np.where(ok_lon, wrapped, np.nan), issues=issues
    )


def coordinate_errors(lat: Any, lon: Any) -> dict[int, str]:
    """The first error of each bad row of two coordinate columns, by 1-based data row."""
    return check_coordinates(lat, lon).errors()


def format_row_errors(source: str, errors: dict[int, str], limit: int = 10) -> str:
    """One line naming the source and its bad rows (the first `limit` of them)."""
    shown = "; ".join(f"row {r}: {why}" for r, why in list(errors.items())[:limit])
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{source}: {len(errors)} bad rows (data rows, 1-based): {shown}{more}"
