"""GPS galleries as data: named galleries and user files of (lat, lon[, name])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoalign.data.manifest import read_table, resolve_columns
from geoalign.errors import DataError
from geoalign.geo.coords import validate_latlon, wrap_longitude


def _geoclip_100k() -> Path:
    from geoalign.paths import geoclip_package_dir

    return geoclip_package_dir() / "model" / "gps_gallery" / "coordinates_100K.csv"


NAMED_GALLERIES = {
    "geoclip-100k": _geoclip_100k,  # official GeoCLIP gallery: 100K MP-16 training coordinates
    "mp16-100k": _geoclip_100k,
}


def gallery_path(name_or_path: str | Path) -> Path:
    key = str(name_or_path)
    return NAMED_GALLERIES[key]() if key in NAMED_GALLERIES else Path(name_or_path)


def find_latlon_columns(columns, *, source: str) -> tuple[str, str]:
    """The latitude/longitude columns by common names (any case), via the manifest rules."""
    mapping = resolve_columns(columns, source=source, require_image=False)
    return mapping["lat"], mapping["lon"]


def coordinate_errors(lat_raw: pd.Series, lon_raw: pd.Series) -> dict[int, str]:
    """Reason per bad row, keyed by 1-based data row number (header excluded, as a spreadsheet shows)."""
    lat = pd.to_numeric(lat_raw, errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(lon_raw, errors="coerce").to_numpy(dtype=np.float64)
    errors: dict[int, str] = {}
    for i in np.flatnonzero(~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90)):
        if not np.isfinite(lat[i]):
            errors[int(i) + 1] = f"latitude {lat_raw.iloc[i]!r} is not a finite number"
        elif not np.isfinite(lon[i]):
            errors[int(i) + 1] = f"longitude {lon_raw.iloc[i]!r} is not a finite number"
        else:
            errors[int(i) + 1] = f"latitude {lat[i]} is outside [-90, 90]"
    return errors


def format_row_errors(source: str, errors: dict[int, str], limit: int = 10) -> str:
    shown = "; ".join(f"row {r}: {why}" for r, why in list(errors.items())[:limit])
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{source}: {len(errors)} bad rows (data rows, 1-based): {shown}{more}"


@dataclass
class CoordinateTable:
    """A table's coordinates, row-aligned: bad rows are NaN in lat/lon, False in `good`."""

    table: pd.DataFrame
    lat: np.ndarray
    lon: np.ndarray  # wrapped to [-180, 180)
    good: np.ndarray
    errors: dict[int, str]  # 1-based data row -> reason

    @property
    def latlon(self) -> np.ndarray:
        """(n_good, 2) coordinates of the valid rows."""
        return np.c_[self.lat[self.good], self.lon[self.good]]


def read_coordinate_table(
    source: str | Path, *, skip_bad_rows: bool = False, hint: str = "--skip-bad-rows"
) -> CoordinateTable:
    """Read lat/lon from a gallery name or table; bad rows raise (naming them) unless skipped."""
    path = gallery_path(source)
    table = read_table(path, string_columns=())
    lat_col, lon_col = find_latlon_columns(table.columns, source=str(path))
    errors = coordinate_errors(table[lat_col], table[lon_col])
    if errors and not skip_bad_rows:
        raise DataError(format_row_errors(str(path), errors) + f" (use {hint} to skip them)")
    good = np.ones(len(table), dtype=bool)
    good[[r - 1 for r in errors]] = False
    lat = pd.to_numeric(table[lat_col], errors="coerce").to_numpy(dtype=np.float64, copy=True)
    lon = pd.to_numeric(table[lon_col], errors="coerce").to_numpy(dtype=np.float64, copy=True)
    lat[~good], lon[~good] = np.nan, np.nan
    return CoordinateTable(table, lat, wrap_longitude(lon), good, errors)


def load_gallery(name_or_path: str | Path) -> pd.DataFrame:
    """A gallery as a DataFrame with float64 `lat`, `lon` (and any other columns, e.g. `name`).

    `name_or_path`: a name from NAMED_GALLERIES or a CSV/TSV/Parquet file.
    """
    path = gallery_path(name_or_path)
    table = read_table(path, string_columns=())
    lat_col, lon_col = find_latlon_columns(table.columns, source=str(path))
    errors = coordinate_errors(table[lat_col], table[lon_col])
    if errors:
        raise DataError(format_row_errors(str(path), errors))
    lat, lon = validate_latlon(table[lat_col], table[lon_col], source=str(path))
    out = table.drop(columns=[lat_col, lon_col]).copy()
    out.insert(0, "lon", lon)
    out.insert(0, "lat", lat)
    out.attrs["source"] = str(path)
    return out.reset_index(drop=True)


def sample_gallery(
    latlon: np.ndarray, size: int, *, seed: int = 0, dedupe_decimals: int | None = 4
) -> np.ndarray:
    """A GPS gallery drawn from training coordinates, as GeoCLIP built its 100K gallery.

    A uniform sample follows the training distribution (dense where photos are dense), which is
    what top-1 retrieval needs. `dedupe_decimals` first merges coordinates equal to that many
    decimals (4 ≈ 11 m), so heavily repeated landmarks do not take many gallery slots.
    """
    latlon = np.asarray(latlon, dtype=np.float64)
    if dedupe_decimals is not None:
        _, keep = np.unique(np.round(latlon, dedupe_decimals), axis=0, return_index=True)
        latlon = latlon[np.sort(keep)]
    if size >= len(latlon):
        return latlon
    rng = np.random.default_rng(seed)
    return latlon[np.sort(rng.choice(len(latlon), size=size, replace=False))]
