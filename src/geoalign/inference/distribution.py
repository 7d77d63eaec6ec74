"""A prediction as a distribution on the sphere: point estimates, highest-density regions with
their area and countries, the density at any point, and the level of a claimed location.

Every method gives a discrete distribution over its candidates (GPS gallery rows or geocells).
It is smoothed with a box kernel on S2 cells of one level (`level`, ~144 km cells at the default
6): each candidate's mass is spread uniformly over the S2 cell that contains it. A candidate that
stands for an area (a GeoSURGE geocell, `Candidates.cells`) coarser than that level spreads its
mass over the whole geocell instead, over its descendants at `level` in proportion to their
areas: a geocell the size of a continent is not a point at its mean location. We use this
kernel rather than von Mises-Fisher kernels because then
- the highest-density regions are exactly unions of S2 cells, with exact areas (spherical
  quadrilaterals), polygons for maps, and a cost of one bincount and one sort per query;
- `density`, `region` and `level_of` describe the same density (a point is in the p-region iff
  its level is <= p), which calibration and verification rely on.
A small uniform component (`UNIFORM_WEIGHT`) keeps the density positive everywhere, so the
negative log-likelihood of a true location is finite. The level (the kernel's bandwidth) and the
temperature are chosen on validation data (`geoalign.inference.calibration`).

Point estimates (`estimate`): "top1" (the most probable candidate), "mode" (the candidate with the
most mass within a radius, `ModeSeeker`), "mean" (the normalised mean direction) and "median"
(the weighted spherical geometric median: the point minimising the expected great-circle
distance, `geoalign.inference.median`). Distributions made together (`solve_together`) solve
their medians together, vectorised, when the first of them is asked for one. Over a large
candidate set the median sees the MEDIAN_SUPPORT most probable candidates one by one and the rest
of the mass merged per level-4 S2 cell, at the mean direction of the cell's candidates: every
bit of mass counts (dropping the tail moved diffuse medians by hundreds of km), at the cost of a
few thousand points; benchmarks/distribution.py measures the answer against the median of the
whole support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoalign.errors import DataError
from geoalign.geo.distance import EARTH_RADIUS_KM
from geoalign.inference.median import angles, geometric_median_batch

DEFAULT_LEVEL = 6
UNIFORM_WEIGHT = 1e-3
EARTH_AREA_KM2 = 4.0 * math.pi * EARTH_RADIUS_KM**2
ESTIMATES = ("top1", "mode", "mean", "median")
MEDIAN_SUPPORT = 1024  # candidates the median sees one by one at most (the most probable)
MEDIAN_TAIL_LEVEL = 4  # the rest of the mass: merged per S2 cell of this level (~600 km)
# problems solved together per thread (arrays stay cache-sized; 16 measured fastest)
MEDIAN_CHUNK = 16


def unit(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(latlon[..., 0]), np.radians(latlon[..., 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def to_latlon(xyz: np.ndarray) -> np.ndarray:
    xyz = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    lat = np.degrees(np.arcsin(np.clip(xyz[..., 2], -1, 1)))
    lon = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))
    return np.stack([lat, lon], axis=-1)


def check_p(p: float) -> float:
    p = float(p)
    if not 0.0 < p < 1.0:
        raise DataError(f"region probability must be strictly between 0 and 1, got {p:g}")
    return p


class CellGrid:
    """Candidates binned into S2 cells of one level: computed once per candidate set.

    `cells` (optional, S2 cell ids [M]): the area each candidate stands for. Candidates whose
    area is coarser than `level` are spread over its descendants at `level` (weights
    proportional to area, summing to 1): then `spread` holds (candidate, cell, weight) triples,
    and a cell's mass is the weighted sum of its candidates' probabilities."""

    def __init__(
        self, latlon: np.ndarray, level: int = DEFAULT_LEVEL, cells: np.ndarray | None = None
    ) -> None:
        from geoalign.geo.s2.ids import cell_levels, latlon_to_cell_ids, parent_ids

        if not 0 <= level <= 30:
            raise DataError(f"S2 level must be in 0..30, got {level}")
        self.level = int(level)
        self.latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        self._leaves = latlon_to_cell_ids(self.latlon[:, 0], self.latlon[:, 1])
        kernel = parent_ids(self._leaves, level)
        coarse = np.zeros(len(kernel), dtype=bool)
        if cells is not None:
            cells = np.asarray(cells, dtype=np.uint64).reshape(-1)
            if len(cells) != len(kernel):
                raise ValueError(f"{len(cells)} cells for {len(kernel)} candidates")
            coarse = cell_levels(cells) < level
        self.spread: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if coarse.any():
            rows, ids, weights = _spread(np.flatnonzero(coarse), cells[coarse], level)
            point = np.flatnonzero(~coarse)
            rows = np.concatenate([point, rows])
            weights = np.concatenate([np.ones(len(point)), weights])
            self.cell_ids, cols = np.unique(
                np.concatenate([kernel[point], ids]), return_inverse=True
            )
            self.spread = (rows, cols.reshape(-1), weights)
            self.cell_of = np.full(len(kernel), -1)  # (spread candidates sit in many cells)
            self.cell_of[point] = self.spread[1][: len(point)]
        else:
            self.cell_ids, self.cell_of = np.unique(kernel, return_inverse=True)
            self.cell_of = self.cell_of.reshape(-1)
        self.area_km2 = cell_areas_km2(self.cell_ids)
        self.xyz = unit(self.latlon)  # unit vectors, for estimates and expected distances
        self._countries: np.ndarray | None = None
        self._tail: tuple[np.ndarray, np.ndarray] | None = None
        rows, cols, weights = self.triples()
        by_cell = np.argsort(cols, kind="stable")
        self._members = (rows[by_cell], weights[by_cell])
        self._offsets = np.searchsorted(cols[by_cell], np.arange(len(self.cell_ids) + 1))

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidate, cell, weight) for every piece of mass: one per candidate unless spread."""
        if self.spread is not None:
            return self.spread
        return np.arange(len(self.cell_of)), self.cell_of, np.ones(len(self.cell_of))

    def cell_mass(self, probs: np.ndarray) -> np.ndarray:
        """Mass of each cell under candidate probabilities `probs` [M]."""
        if self.spread is None:
            return np.bincount(self.cell_of, weights=probs, minlength=len(self.cell_ids))
        rows, cols, weights = self.spread
        return np.bincount(cols, weights=probs[rows] * weights, minlength=len(self.cell_ids))

    def country_codes(self) -> np.ndarray:
        """Index into `country_names` (ISO codes, "sea" offshore) of every candidate's country,
        looked up once (point in polygon)."""
        if self._countries is None:
            from geoalign.geo.regions import load_countries
            from geoalign.geo.s2.ids import cell_centers

            rows, cols, weights = self.triples()
            # a spread piece lies in the country of its cell's centre; a point, in its own
            pieces = np.flatnonzero(self.cell_of[rows] < 0)
            centres = np.stack(cell_centers(self.cell_ids[cols[pieces]]), axis=1).reshape(-1, 2)
            codes = load_countries().country_codes(np.concatenate([self.latlon, centres]))
            names = np.array([str(c) if c else "sea" for c in codes], dtype=object)
            self.country_names, found = np.unique(names.astype(str), return_inverse=True)
            found = found.reshape(-1)
            self._countries = found[: len(self.latlon)]
            piece_country = self._countries[rows]
            piece_country[pieces] = found[len(self.latlon) :]
            # (cell, country) pairs: a region's country shares then need one pass over the
            # candidates per distribution, not one per region
            pairs = cols.astype(np.int64) * len(self.country_names) + piece_country
            uniq, self.pair_of = np.unique(pairs, return_inverse=True)
            self.pair_of = self.pair_of.reshape(-1)
            self.pair_rows, self.pair_weights = rows, weights
            self.pair_cell, self.pair_country = np.divmod(uniq, len(self.country_names))
        return self._countries

    def tail_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(index of each candidate's MEDIAN_TAIL_LEVEL cell [M], unit mean direction of each
        such cell's candidates [C, 3]): where the median puts the mass of its tail."""
        if self._tail is None:
            from geoalign.geo.s2.ids import parent_ids

            _, of = np.unique(parent_ids(self._leaves, MEDIAN_TAIL_LEVEL), return_inverse=True)
            of = of.reshape(-1)
            sums = np.stack([np.bincount(of, self.xyz[:, d]) for d in range(3)], axis=1)
            norm = np.linalg.norm(sums, axis=1, keepdims=True)
            # (candidates summing to zero in a cell: impossible within ~600 km; any unit vector)
            self._tail = of, np.where(norm > 0, sums / np.maximum(norm, 1e-300), [0, 0, 1.0])
        return self._tail

    def members(self, cell: int) -> tuple[np.ndarray, np.ndarray]:
        """(candidate indices, weights) of the mass in cell number `cell` (an index into
        `cell_ids`): the cell holds sum(weights * probs[indices])."""
        lo, hi = self._offsets[cell], self._offsets[cell + 1]
        return self._members[0][lo:hi], self._members[1][lo:hi]

    def cell_index(self, latlon: np.ndarray) -> np.ndarray:
        """Index into `cell_ids` of the cell holding each point (-1: no candidate there)."""
        from geoalign.geo.s2.ids import latlon_to_cell_ids, parent_ids

        pts = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        ids = parent_ids(latlon_to_cell_ids(pts[:, 0], pts[:, 1]), self.level)
        pos = np.searchsorted(self.cell_ids, ids).clip(max=len(self.cell_ids) - 1)
        return np.where(self.cell_ids[pos] == ids, pos, -1)


def cell_areas_km2(ids: np.ndarray) -> np.ndarray:
    """Exact areas of S2 cells (spherical quadrilaterals: two triangles, Van Oosterom-Strackee)."""
    from geoalign.geo.s2.ids import cell_vertices

    v = unit(cell_vertices(np.asarray(ids, dtype=np.uint64)))  # [M, 4, 3]

    def triangle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        num = np.abs(np.einsum("ij,ij->i", a, np.cross(b, c)))
        den = 1 + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, c)
        den = den + np.einsum("ij,ij->i", c, a)
        return 2 * np.arctan2(num, den)

    steradians = triangle(v[:, 0], v[:, 1], v[:, 2]) + triangle(v[:, 0], v[:, 2], v[:, 3])
    return steradians * EARTH_RADIUS_KM**2


@dataclass
class Region:
    """A highest-density region: the S2 cells (one level) holding the most density, until their
    mass reaches `p`. `mass` is what they hold (>= p, one cell's worth more at most)."""

    p: float
    mass: float
    cell_ids: np.ndarray
    area_km2: float
    country_mass: list[tuple[str, float]] = field(default_factory=list)

    def polygons(self, points_per_edge: int = 2) -> Any:
        """The region's outline as a shapely (Multi)Polygon in lon/lat degrees, split at the
        antimeridian (GeoJSON's rule)."""
        import shapely
        import shapely.affinity
        from shapely.geometry import box

        from geoalign.geo.s2.ids import cell_polygons

        rings = cell_polygons(np.asarray(self.cell_ids, dtype=np.uint64), points_per_edge)
        polys = []
        world = box(-180, -90, 180, 90)
        for ring in rings:
            poly = shapely.Polygon(ring[:, ::-1])
            lo, hi = ring[:, 1].min(), ring[:, 1].max()
            if hi > 180 or lo < -180:  # unwrapped across the antimeridian: two halves
                shift = -360 if hi > 180 else 360
                polys += [
                    poly.intersection(world),
                    shapely.affinity.translate(poly, shift).intersection(world),
                ]
            elif abs(ring[:, 0]).max() >= 89.999 and hi - lo > 180:  # a polar cap cell
                polys.append(poly.intersection(world))
            else:
                polys.append(poly)
        return shapely.make_valid(shapely.unary_union([q for q in polys if not q.is_empty]))

    def summary(self) -> str:
        """'90% region: 1.2 M km², mostly FR 61%, BE 20%' (country shares of the region's mass)."""
        area = self.area_km2
        text = f"{area / 1e6:.2g} M km²" if area >= 1e5 else f"{area:,.0f} km²"
        top = ", ".join(f"{c} {share:.0%}" for c, share in self.country_mass[:3] if share >= 0.05)
        return f"{self.p:.0%} region: {text}" + (f", mostly {top}" if top else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "mass": self.mass,
            "area_km2": self.area_km2,
            "cells": len(self.cell_ids),
            "countries": [{"code": c, "share": s} for c, s in self.country_mass],
        }


class Distribution:
    """One query's distribution over candidates, smoothed on S2 cells (see the module doc).

    `probs` [M] over the candidates of `grid` (zero outside a prior); `calibration` maps a
    nominal region probability to the mass that covers it on validation data (conformal), or
    None to use p as is."""

    def __init__(
        self,
        grid: CellGrid,
        probs: np.ndarray,
        *,
        seeker: Any = None,
        calibration: Any = None,
    ) -> None:
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if probs.shape[0] != len(grid.latlon):
            raise ValueError(f"{probs.shape[0]} probabilities for {len(grid.latlon)} candidates")
        total = probs.sum()
        if not np.isfinite(total) or total <= 0:
            raise DataError(
                "the distribution has no finite positive mass (damaged model or cache?)"
            )
        self.grid = grid
        self.probs = probs / total
        self.seeker = seeker
        self.calibration = calibration
        mass = grid.cell_mass(self.probs)
        self.cell_mass = mass
        self.order = np.argsort(-(mass / grid.area_km2), kind="stable")
        self.cum = np.cumsum(mass[self.order])
        self.rank = np.empty_like(self.order)
        self.rank[self.order] = np.arange(len(self.order))
        self._median: np.ndarray | None = None  # unit vector, once solved
        self._pair_mass: np.ndarray | None = None  # mass per (cell, country), once asked
        self._batch: list[Distribution] = [self]  # solved together with these (`solve_together`)

    # -- estimates -------------------------------------------------------------------------------
    def estimate(self, kind: str = "median") -> np.ndarray:
        """(lat, lon) of a point estimate: top1, mode, mean or median (see the module doc)."""
        latlon = self.grid.latlon
        if kind == "top1":
            return latlon[int(np.argmax(self.probs))].copy()
        if kind == "mode":
            if self.seeker is None:
                raise DataError("the mode estimate needs the candidates' neighbourhoods (a seeker)")
            import torch

            idx, _ = self.seeker.select(torch.from_numpy(self.probs[None]).float())
            return latlon[int(idx[0])].copy()
        if kind == "mean":
            mean = self.probs @ self.grid.xyz
            if np.linalg.norm(mean) < 1e-9:
                return self.estimate("top1")  # antipodal balance: no mean direction
            return to_latlon(mean)
        if kind == "median":
            if self._median is None:
                solve_medians(self._batch)
            assert self._median is not None
            return to_latlon(self._median)
        raise DataError(f"unknown estimate {kind!r}; known: {', '.join(ESTIMATES)}")

    def expected_distance_km(self, latlon: np.ndarray) -> float:
        """E[great-circle distance] from a point to the distribution (what the median minimises)."""
        x = unit(np.asarray(latlon, dtype=np.float64).reshape(2))
        return float((self.probs * angles(self.grid.xyz, x)).sum() * EARTH_RADIUS_KM)

    # -- regions and levels ------------------------------------------------------------------------
    def mass_for(self, p: float) -> float:
        """The mass a nominal p-region holds: p itself, or its calibrated value."""
        p = check_p(p)
        return float(self.calibration(p)) if self.calibration is not None else p

    def region(self, p: float, *, countries: bool = True) -> Region:
        """The smallest-area union of cells whose mass reaches p (calibrated if known)."""
        target = self.mass_for(p)
        k = int(np.searchsorted(self.cum, target - 1e-12)) + 1
        k = min(k, len(self.order))
        cells = self.order[:k]
        region = Region(
            p=float(p),
            mass=float(self.cum[k - 1]),
            cell_ids=self.grid.cell_ids[cells],
            area_km2=float(self.grid.area_km2[cells].sum()),
        )
        if countries:
            region.country_mass = self._country_mass(cells)
        return region

    def _country_mass(self, cells: np.ndarray) -> list[tuple[str, float]]:
        """Shares of the region's mass by country of the candidates in it ("sea" offshore)."""
        grid = self.grid
        grid.country_codes()
        names = grid.country_names
        if self._pair_mass is None:
            pieces = self.probs[grid.pair_rows] * grid.pair_weights
            self._pair_mass = np.bincount(grid.pair_of, pieces, minlength=len(grid.pair_cell))
        chosen = np.zeros(len(grid.cell_ids), dtype=bool)
        chosen[cells] = True
        inside = chosen[grid.pair_cell]
        mass = np.bincount(
            grid.pair_country[inside], weights=self._pair_mass[inside], minlength=len(names)
        )
        total = mass.sum() or 1.0
        return [(str(names[i]), float(mass[i] / total)) for i in np.argsort(-mass) if mass[i] > 0]

    def level_of(self, latlon: np.ndarray) -> np.ndarray:
        """For each point [N, 2], the smallest nominal p whose region contains it (1.0 where no
        region below 1 does). With calibration, levels are mapped back to nominal p."""
        idx = self.grid.cell_index(latlon)
        level = np.ones(len(idx))
        inside = idx >= 0
        level[inside] = self.cum[self.rank[idx[inside]]]
        if self.calibration is not None:
            level[inside] = self.calibration.nominal(level[inside])
        return np.minimum(level, 1.0)

    def covering_area_km2(self, latlon: np.ndarray) -> np.ndarray:
        """Area of the smallest region containing each point [N, 2] (inf: no region below 1
        does); the "recall vs area" measure of how much map a user must search."""
        if not hasattr(self, "_cum_area"):
            self._cum_area = np.cumsum(self.grid.area_km2[self.order])
        idx = self.grid.cell_index(latlon)
        out = np.full(len(idx), np.inf)
        inside = idx >= 0
        out[inside] = self._cum_area[self.rank[idx[inside]]]
        return out

    def density(self, latlon: np.ndarray) -> np.ndarray:
        """Probability density per km² at each point [N, 2] (box kernel + the uniform floor)."""
        idx = self.grid.cell_index(latlon)
        dens = np.zeros(len(idx))
        inside = idx >= 0
        dens[inside] = self.cell_mass[idx[inside]] / self.grid.area_km2[idx[inside]]
        return (1 - UNIFORM_WEIGHT) * dens + UNIFORM_WEIGHT / EARTH_AREA_KM2

    # -- output ------------------------------------------------------------------------------------
    def to_geojson(
        self,
        regions: tuple[float, ...] = (0.5, 0.9),
        estimate: str = "median",
        heatmap_cells: int = 0,
    ) -> dict[str, Any]:
        """A GeoJSON FeatureCollection: the point estimate and each p-region's outline; with
        `heatmap_cells` > 0, also up to that many of the densest smoothing cells ("heat"
        features with their density in probability per km², densest first) for a heatmap."""
        from shapely.geometry import mapping

        lat, lon = self.estimate(estimate)
        features: list[dict[str, Any]] = [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
                "properties": {"kind": "estimate", "estimate": estimate},
            }
        ]
        for p in sorted(regions, reverse=True):
            r = self.region(p)
            geom = r.polygons().simplify(0.01, preserve_topology=True)
            features.append(
                {
                    "type": "Feature",
                    "geometry": _rounded(mapping(geom)),
                    "properties": {"kind": "region", **r.to_dict(), "summary": r.summary()},
                }
            )
        if heatmap_cells > 0:
            from geoalign.geo.maplayers import heat_cells

            rings, density = heat_cells(self, max_cells=heatmap_cells)
            for ring, d in zip(rings, density, strict=True):
                coords = [[round(float(lon), 3), round(float(lat), 3)] for lat, lon in ring]
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [coords]},
                        "properties": {"kind": "heat", "density_km2": float(f"{d:.4g}")},
                    }
                )
        return {"type": "FeatureCollection", "features": features}


def solve_together(dists: list[Distribution]) -> list[Distribution]:
    """Mark distributions to have their medians solved together (the first `estimate("median")`
    on any of them solves all): vectorised, that costs a fraction per query of one at a time."""
    for d in dists:
        d._batch = dists
    return dists


def solve_medians(dists: list[Distribution]) -> None:
    """The median of every distribution not solved yet, MEDIAN_CHUNK problems at a time; chunks
    on as many threads as torch uses (numpy's array loops release the GIL: on 2 cores a batch's
    medians take about 0.6 of the time on one, benchmarks/distribution.py)."""
    todo = [d for d in dists if d._median is None]
    chunks = [todo[start : start + MEDIAN_CHUNK] for start in range(0, len(todo), MEDIAN_CHUNK)]
    workers = min(len(chunks), _threads())
    for grid in {id(d.grid): d.grid for d in todo}.values():
        if len(grid.latlon) > MEDIAN_SUPPORT:
            grid.tail_cells()  # (once, before the threads share the grid)
    if workers <= 1:
        for chunk in chunks:
            _solve_chunk(chunk)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(_solve_chunk, chunks))
    for d in dists:
        d._batch = [d]  # solved: a distribution kept alone no longer keeps its batch alive


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _solve_chunk(chunk: list[Distribution]) -> None:
    if all(d.grid is chunk[0].grid for d in chunk):  # (one call's distributions share it)
        problems = [median_problem(chunk[0].grid, np.stack([d.probs for d in chunk]))]
    else:
        problems = [median_problem(d.grid, d.probs[None]) for d in chunk]
    n = max(x.shape[1] for x, _ in problems)
    xyz = np.zeros((len(chunk), n, 3))
    xyz[..., 2] = 1.0  # padding: any unit vector, with zero weight
    w = np.zeros((len(chunk), n))
    row = 0
    for x, wi in problems:
        xyz[row : row + len(x), : x.shape[1]], w[row : row + len(x), : x.shape[1]] = x, wi
        row += len(x)
    for d, x in zip(chunk, geometric_median_batch(xyz, w), strict=True):
        d._median = x


def median_problem(grid: CellGrid, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points [B, n, 3] and weights [B, n] whose geometric median is each row of `probs`
    [B, M]'s: every candidate, or the MEDIAN_SUPPORT most probable one by one plus the rest of
    the mass per tail cell (`CellGrid.tail_cells`). torch.topk over the batch, not numpy's
    argpartition row by row (about three times as long here)."""
    if probs.shape[1] <= MEDIAN_SUPPORT:
        return np.broadcast_to(grid.xyz, (*probs.shape, 3)), probs
    import torch

    probs_t = torch.from_numpy(probs)
    top_w, top = torch.topk(probs_t, MEDIAN_SUPPORT, dim=1, sorted=False)
    of, centres = grid.tail_cells()
    of_t = torch.from_numpy(of)
    # each cell's mass less its top candidates' (no copy of the gallery-sized rows)
    tail = torch.zeros(len(probs), len(centres), dtype=probs_t.dtype)
    tail.index_add_(1, of_t, probs_t).scatter_add_(1, of_t[top], -top_w).clamp_(min=0.0)
    top = top.numpy()
    xyz = np.concatenate([grid.xyz[top], np.broadcast_to(centres, (len(probs), *centres.shape))], 1)
    return xyz, np.concatenate([top_w.numpy(), tail.numpy()], 1)


def _rounded(geometry: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """GeoJSON coordinates rounded (1e-4 degrees is 11 m): regions stay small on disk."""

    def walk(c: Any) -> Any:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            return [round(float(v), digits) for v in c]
        return [walk(v) for v in c]

    return {**geometry, "coordinates": walk(geometry["coordinates"])}


def _spread(rows: np.ndarray, cells: np.ndarray, level: int):
    """(candidate, descendant id at `level`, area share) for candidates standing for `cells`
    coarser than `level`: a cell's descendants at a finer level are consecutive ids, 2 * lsb
    apart, starting lsb - 1 after its first leaf."""
    from geoalign.geo.s2.ids import cell_levels, lsb_for_level, range_min

    lsb = lsb_for_level(level)
    counts = 4 ** (level - cell_levels(cells))
    first = np.repeat(range_min(cells) + (lsb - np.uint64(1)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ids = first + np.uint64(2) * lsb * within.astype(np.uint64)
    area = cell_areas_km2(ids)
    owner = np.repeat(np.arange(len(cells)), counts)
    share = area / np.bincount(owner, weights=area)[owner]
    return rows[owner], ids, share
