"""GPS galleries as data: named galleries and user files of (lat, lon[, name])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geoalign.errors import DataError
from geoalign.geo.coords import validate_latlon

_LAT_NAMES = ("lat", "latitude", "gps_lat", "y")
_LON_NAMES = ("lon", "lng", "long", "longitude", "gps_lon", "x")


def _geoclip_100k() -> Path:
    from geoalign.zoo import geoclip_package_dir

    return geoclip_package_dir() / "model" / "gps_gallery" / "coordinates_100K.csv"


NAMED_GALLERIES = {
    "geoclip-100k": _geoclip_100k,  # official GeoCLIP gallery: 100K MP-16 training coordinates
    "mp16-100k": _geoclip_100k,
}


def find_latlon_columns(columns, *, source: str) -> tuple[str, str]:
    """Pick the latitude/longitude columns by common names, case-insensitively."""
    lower = {str(c).lower(): c for c in columns}
    lat = next((lower[n] for n in _LAT_NAMES if n in lower), None)
    lon = next((lower[n] for n in _LON_NAMES if n in lower), None)
    if lat is None or lon is None:
        raise DataError(
            f"{source}: cannot find latitude/longitude columns among {list(columns)} "
            f"(expected one of {_LAT_NAMES} and one of {_LON_NAMES})"
        )
    return lat, lon


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as err:  # pandas raises many types for a malformed file
        raise DataError(f"{path}: cannot be read as a table: {err}") from err


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


def load_gallery(name_or_path: str | Path) -> pd.DataFrame:
    """A gallery as a DataFrame with float64 `lat`, `lon` (and any other columns, e.g. `name`)."""
    key = str(name_or_path)
    path = NAMED_GALLERIES[key]() if key in NAMED_GALLERIES else Path(name_or_path)
    table = read_table(path)
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
