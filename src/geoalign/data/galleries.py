"""GPS galleries as data: the named galleries (GeoCLIP's 100K) and users' tables of lat, lon[, name].

A gallery is read like any other table (`data.tables`) and its coordinates are checked by the one
set of rules (`geo.coords`): a bad row is named by its 1-based data row, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoalign.data.tables import read_table, resolve_columns
from geoalign.errors import DataError
from geoalign.geo.coords import check_coordinates, format_row_errors
from geoalign.paths import cache_dir, geoclip_package_dir


def _geoclip_100k() -> Path:
    return geoclip_package_dir() / "model" / "gps_gallery" / "coordinates_100K.csv"


NAMED_GALLERIES: dict[str, Callable[[], Path]] = {
    "geoclip-100k": _geoclip_100k,  # official GeoCLIP gallery: 100K MP-16 training coordinates
    "mp16-100k": _geoclip_100k,
}


@dataclass(frozen=True)
class BuiltGallery:
    """A named gallery the user builds once from their training manifest (no file ships with
    geoalign): `geoalign gallery build --from MANIFEST --name NAME` writes it where the name finds it."""

    size: int
    about: str


# GeoCLIP evaluates GWS15k against a 500K gallery of MP-16 training coordinates (its §4.1), built
# the way its 100K gallery was (a uniform sample of the training coordinates).
BUILT_GALLERIES: dict[str, BuiltGallery] = {
    "mp16-500k": BuiltGallery(500_000, "GeoCLIP's GWS15k gallery: 500K MP-16 training coordinates"),
}


def built_gallery_path(name: str) -> Path:
    """Where the built gallery `name` lives ($GEOALIGN_HOME/galleries/NAME.parquet)."""
    return cache_dir() / "galleries" / f"{name}.parquet"


def gallery_path(name_or_path: str | Path) -> Path:
    """The file behind a gallery name (NAMED_GALLERIES, BUILT_GALLERIES), or the path itself."""
    key = str(name_or_path)
    if key in NAMED_GALLERIES:
        return NAMED_GALLERIES[key]()
    if key in BUILT_GALLERIES:
        path = built_gallery_path(key)
        if not path.is_file():
            g = BUILT_GALLERIES[key]
            raise DataError(
                f"gallery {key} ({g.about}) is not built yet: geoalign gallery build --from "
                f"<MP-16 training manifest> --size {g.size} --name {key}"
            )
        return path
    return Path(name_or_path)


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
    cols = resolve_columns(table.columns, source=str(path), require_image=False)
    check = check_coordinates(table[cols["lat"]], table[cols["lon"]])
    errors = check.errors()
    if errors and not skip_bad_rows:
        raise DataError(format_row_errors(str(path), errors) + f" (use {hint} to skip them)")
    good = check.good
    lat, lon = check.lat.copy(), check.lon.copy()
    lat[~good], lon[~good] = np.nan, np.nan
    return CoordinateTable(table, lat, lon, good, errors)


def load_gallery(name_or_path: str | Path, *, dedupe: bool = True) -> pd.DataFrame:
    """A gallery as a DataFrame with float64 `lat`, `lon` (and any other columns, e.g. `name`).

    `name_or_path`: a name from NAMED_GALLERIES or a CSV/TSV/Parquet file. Any bad row is an error.
    With `dedupe`, rows with exactly the same coordinates are merged into the first of them: a
    duplicate only repeats a candidate in every top-k list (GeoCLIP's 100K gallery has 5,877).
    `attrs` holds `source`, `duplicates_merged` (rows removed) and a one-line `description`.
    """
    path = gallery_path(name_or_path)
    table = read_table(path, string_columns=())
    cols = resolve_columns(table.columns, source=str(path), require_image=False)
    check = check_coordinates(table[cols["lat"]], table[cols["lon"]])
    errors = check.errors()
    if errors:
        raise DataError(format_row_errors(str(path), errors))
    out = table.drop(columns=[cols["lat"], cols["lon"]]).copy()
    out.insert(0, "lon", check.lon)
    out.insert(0, "lat", check.lat)
    merged = 0
    if dedupe:
        # + 0.0 turns -0.0 into 0.0: the same point, which float hashing would tell apart
        repeat = pd.DataFrame({"lat": check.lat + 0.0, "lon": check.lon + 0.0}).duplicated()
        merged = int(repeat.sum())
        out = out.loc[~repeat.to_numpy()]
    out = out.reset_index(drop=True)
    out.attrs["source"] = str(path)
    out.attrs["duplicates_merged"] = merged
    note = f", {merged:,} exact duplicate coordinates merged" if merged else ""
    out.attrs["description"] = f"{name_or_path} ({len(out):,} coordinates{note})"
    return out
