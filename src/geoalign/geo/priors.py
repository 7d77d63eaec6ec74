"""Geographic priors: what the user already knows about where a photo was taken.

GeoCLIP (Table 5) shows that restricting the GPS gallery with prior knowledge (a country, a region, a
radius around a place) improves accuracy. A prior here is a predicate over (lat, lon) points:
`prior.mask(gallery_latlon)` gives a boolean mask, and priors compose with `&`, `|` and `~`.

    prior = Country("FR") | Region("US-CA")
    keep = prior.indices(gallery)   # raises GeoalignError when nothing is left
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from geoalign.errors import CoordinateError, GeoalignError, shown
from geoalign.geo.coords import as_latlon_array, validate_latlon
from geoalign.geo.distance import haversine_km
from geoalign.geo.regions import DEFAULT_COAST_KM, load_countries


class Prior(ABC):
    """A predicate over points; subclasses implement `_mask` on a validated (N, 2) float64 array."""

    def mask(self, latlon) -> np.ndarray:
        """Boolean mask over (N, 2) lat/lon points (numpy, torch or list) that satisfy the prior."""
        return self._mask(as_latlon_array(latlon, source="gallery"))

    @abstractmethod
    def _mask(self, latlon: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"

    def indices(self, latlon) -> np.ndarray:
        """Indices of the points that satisfy the prior; an error if there are none."""
        keep = np.flatnonzero(self.mask(latlon))
        if keep.size == 0:
            n = len(as_latlon_array(latlon, source="gallery"))
            raise GeoalignError(
                f"the prior '{self}' leaves none of the {n} gallery points; widen it "
                "(larger radius, larger box, coast tolerance) or use a denser gallery"
            )
        return keep

    def __and__(self, other: Prior) -> Prior:
        return AllOf([self, other])

    def __or__(self, other: Prior) -> Prior:
        return AnyOf([self, other])

    def __invert__(self) -> Prior:
        return Not(self)


class AllOf(Prior):
    def __init__(self, priors: Sequence[Prior]):
        self.priors = [q for p in priors for q in (p.priors if isinstance(p, AllOf) else [p])]

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        out = np.ones(len(latlon), dtype=bool)
        for prior in self.priors:  # evaluate later priors only where earlier ones hold
            idx = np.flatnonzero(out)
            if idx.size == 0:
                break
            out[idx] = prior._mask(latlon[idx])
        return out

    def __str__(self) -> str:
        return " and ".join(f"({p})" if isinstance(p, AnyOf) else str(p) for p in self.priors)


class AnyOf(Prior):
    def __init__(self, priors: Sequence[Prior]):
        self.priors = [q for p in priors for q in (p.priors if isinstance(p, AnyOf) else [p])]

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        out = np.zeros(len(latlon), dtype=bool)
        for prior in self.priors:
            idx = np.flatnonzero(~out)
            if idx.size == 0:
                break
            out[idx] = prior._mask(latlon[idx])
        return out

    def __str__(self) -> str:
        return " or ".join(f"({p})" if isinstance(p, AllOf) else str(p) for p in self.priors)


class Not(Prior):
    def __init__(self, prior: Prior):
        self.prior = prior

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        return ~self.prior._mask(latlon)

    def __str__(self) -> str:
        return f"not ({self.prior})"


class Country(Prior):
    """Points in a country (Natural Earth 1:10m polygons), or offshore within `coast_km` of it.

    `query` is an ISO alpha-2 or alpha-3 code or a name in one of 26 languages ("FR", "FRA",
    "France", "Frankreich"). France, Australia, Brazil include their overseas parts as Natural Earth
    draws them (e.g. FR includes Réunion and French Guiana).
    """

    def __init__(self, query: str, *, coast_km: float = DEFAULT_COAST_KM):
        atlas = load_countries()
        self.features = atlas.resolve(query)
        first = atlas.countries[self.features[0]]
        self.code, self.name, self.coast_km = first.code, first.name, float(coast_km)

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        return load_countries().contains(self.features, latlon, coast_km=self.coast_km)

    def __str__(self) -> str:
        return f"in {self.name} ({self.code})"


class Region(Prior):
    """Points in a first-level region (state, province): "US-CA", "US/California", "Bavaria".

    Natural Earth's admin-1 polygons are not shipped by any package we can depend on, so membership
    is approximated: the point must be in the region's country (polygons, exact) and its nearest
    GeoNames place in that country must belong to the region (a Voronoi partition of ~155K places,
    so assignments can be off within a few km of a regional border).
    """

    def __init__(self, spec: str, *, coast_km: float = DEFAULT_COAST_KM):
        from geoalign.geo import places

        self.country_code, self.region = places.default().resolve_region(spec)
        self.country = Country(self.country_code, coast_km=coast_km)
        self.coast_km = float(coast_km)

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        from geoalign.geo import places

        out = self.country._mask(latlon)
        idx = np.flatnonzero(out)
        if idx.size:
            codes, regions = places.default().regions_of(latlon[idx], coast_km=self.coast_km)
            out[idx] = (codes == self.country_code) & (regions == self.region)
        return out

    def __str__(self) -> str:
        return f"in {self.region}, {self.country_code}"


class Radius(Prior):
    """Points within `km` (great-circle) of a centre."""

    def __init__(self, lat: float, lon: float, km: float):
        lat_arr, lon_arr = validate_latlon([lat], [lon], source="radius centre")
        if not np.isfinite(km) or km <= 0:
            raise CoordinateError(f"radius must be a positive number of km, got {shown(km)}")
        self.lat, self.lon, self.km = float(lat_arr[0]), float(lon_arr[0]), float(km)

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        return haversine_km(latlon[:, 0], latlon[:, 1], self.lat, self.lon) <= self.km

    def __str__(self) -> str:
        return f"within {self.km:g} km of ({self.lat:g}, {self.lon:g})"


# Longitude wrapping, (lon + 180) % 360 - 180, moves values by ~1e-14 degrees; a point given exactly
# on a box edge must stay inside. 1e-9 degrees is 0.1 mm.
_EDGE_EPS = 1e-9


class BBox(Prior):
    """Points in a latitude/longitude box. `min_lon > max_lon` means the box crosses the date line
    (e.g. min_lon=170, max_lon=-170 covers 20 degrees around the antimeridian)."""

    def __init__(self, min_lat: float, min_lon: float, max_lat: float, max_lon: float):
        values = np.array([min_lat, min_lon, max_lat, max_lon], dtype=np.float64)
        if not np.isfinite(values).all():
            raise CoordinateError(
                f"bounding box values must be finite numbers, got {values.tolist()}"
            )
        if not (-90 <= min_lat <= max_lat <= 90):
            raise CoordinateError(
                f"bounding box needs -90 <= min_lat <= max_lat <= 90, got {min_lat}, {max_lat}"
            )
        if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
            raise CoordinateError(
                f"bounding box longitudes must lie in [-180, 180], got {min_lon}, {max_lon}"
            )
        self.min_lat, self.min_lon, self.max_lat, self.max_lon = (float(v) for v in values)

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        lat, lon = latlon[:, 0], latlon[:, 1]  # lon already wrapped to [-180, 180)
        in_lat = (lat >= self.min_lat - _EDGE_EPS) & (lat <= self.max_lat + _EDGE_EPS)
        lo, hi = self.min_lon - _EDGE_EPS, self.max_lon + _EDGE_EPS
        if lo <= hi:
            # -180 and 180 are one meridian; wrapping turned 180 into -180.
            in_lon = ((lon >= lo) & (lon <= hi)) | ((lon == -180.0) & (hi >= 180.0))
        else:
            in_lon = (lon >= lo) | (lon <= hi)
        return in_lat & in_lon

    def __str__(self) -> str:
        wrap = " (across the date line)" if self.min_lon > self.max_lon else ""
        return (
            f"in box lat [{self.min_lat:g}, {self.max_lat:g}], "
            f"lon [{self.min_lon:g}, {self.max_lon:g}]{wrap}"
        )


class LandOnly(Prior):
    """Points on land: inside any Natural Earth country polygon, or within `coast_km` of one."""

    def __init__(self, *, coast_km: float = DEFAULT_COAST_KM):
        self.coast_km = float(coast_km)

    def _mask(self, latlon: np.ndarray) -> np.ndarray:
        return load_countries().assign(latlon, coast_km=self.coast_km) >= 0

    def __str__(self) -> str:
        return "on land" + (f" (or within {self.coast_km:g} km of it)" if self.coast_km else "")


# --------------------------------------------------------------------------- parsing
def _floats(text, count: int, what: str) -> list[float]:
    if isinstance(text, str):
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    else:
        parts = list(text)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != count:
        raise GeoalignError(f"{what}: expected {count} comma-separated numbers, got {text!r}")
    return values


def place_prior(item: str, *, coast_km: float = DEFAULT_COAST_KM) -> Prior:
    """A country ("FR", "France") or a region ("US-CA", "US/California", "Bavaria")."""
    item = item.strip()
    if "/" in item or (len(item) > 3 and item[2:3] == "-" and item[:2].isalpha()):
        return Region(item, coast_km=coast_km)
    try:
        return Country(item, coast_km=coast_km)
    except GeoalignError as country_error:
        try:
            return Region(item, coast_km=coast_km)
        except GeoalignError:
            raise country_error from None


def parse_prior(
    within: str | Sequence[str] | None = None,
    near: str | Sequence[float] | None = None,
    radius_km: float | None = None,
    bbox: str | Sequence[float] | None = None,
    land_only: bool = False,
    *,
    coast_km: float = DEFAULT_COAST_KM,
) -> Prior | None:
    """Build a prior from CLI-style options; None when no option is given.

    within: countries/regions, comma-separated or a list ("FR,ES", "US-CA", "US/California"),
    any of which may hold; near + radius_km: "48.86,2.35" and a radius; bbox:
    "min_lat,min_lon,max_lat,max_lon" (min_lon > max_lon crosses the date line); land_only: drop
    open-sea points. All given options must hold together.
    """
    parts: list[Prior] = []
    if within:
        items = within.split(",") if isinstance(within, str) else list(within)
        places = [place_prior(i, coast_km=coast_km) for i in items if i.strip()]
        if places:
            parts.append(places[0] if len(places) == 1 else AnyOf(places))
    if (near is None) != (radius_km is None):
        raise GeoalignError("`near` and `radius_km` go together: give both or neither")
    if near is not None:
        lat, lon = _floats(near, 2, "near (lat,lon)")
        parts.append(Radius(lat, lon, float(radius_km)))
    if bbox is not None:
        parts.append(BBox(*_floats(bbox, 4, "bbox (min_lat,min_lon,max_lat,max_lon)")))
    if land_only:
        parts.append(LandOnly(coast_km=coast_km))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(parts)
