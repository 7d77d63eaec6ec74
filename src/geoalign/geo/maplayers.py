"""What the maps draw of a prediction's distribution: heat cells, region outlines, the estimate.

Both the PNG and the HTML map take either a `Distribution` (`geoalign.inference.distribution`,
used here by its attributes only: geo sits below inference) or the GeoJSON its `to_geojson` writes;
the GeoJSON has outlines and the estimate but no per-cell mass, so it gives no heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from geoalign.errors import GeoalignError

HEAT_MASS = 0.999  # cells drawn: the densest ones holding this much mass ...
HEAT_MAX_CELLS = 4000  # ... but at most this many (an HTML page stays a few MB)
HEAT_DECADES = 3.0  # colour scale: from max density / 10**HEAT_DECADES to max density
REGION_COLOURS = ("#6a3d9a", "#e31a1c", "#ff7f00", "#1f78b4")


@dataclass
class DistributionLayers:
    """Drawable pieces of a distribution; `heat_rings` are (lat, lon) rings with a density each."""

    estimate: tuple[float, float] | None = None
    estimate_kind: str = ""
    regions: list[tuple[float, Any, str]] = field(default_factory=list)  # (p, geometry, summary)
    heat_rings: list[np.ndarray] = field(default_factory=list)
    heat_density: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def extent_points(self) -> np.ndarray:
        """(lat, lon) points a map's view should include: the estimate and the regions' corners."""
        pts = [] if self.estimate is None else [self.estimate]
        for _, geom, _ in self.regions:
            lon0, lat0, lon1, lat1 = geom.bounds
            pts += [(lat0, lon0), (lat1, lon1)]
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def region_colour(i: int) -> str:
    return REGION_COLOURS[i % len(REGION_COLOURS)]


def heat_cells(
    distribution: Any, max_cells: int = HEAT_MAX_CELLS
) -> tuple[list[np.ndarray], np.ndarray]:
    """The densest S2 cells holding HEAT_MASS of the mass (at most `max_cells`): their (lat, lon)
    rings and densities (probability per km²), densest first."""
    from geoalign.geo.s2.ids import cell_polygons

    mass = np.asarray(distribution.cell_mass, dtype=np.float64)
    density = mass / np.asarray(distribution.grid.area_km2, dtype=np.float64)
    order = np.argsort(-density, kind="stable")
    order = order[mass[order] > 0]
    keep = int(np.searchsorted(np.cumsum(mass[order]), HEAT_MASS * mass.sum())) + 1
    order = order[: min(keep, max_cells, len(order))]
    ids = np.asarray(distribution.grid.cell_ids, dtype=np.uint64)[order]
    rings = list(cell_polygons(ids, points_per_edge=2)) if len(ids) else []
    return rings, density[order]


def from_distribution(
    distribution: Any, regions: tuple[float, ...] = (0.5, 0.9), estimate: str | None = "median"
) -> DistributionLayers:
    """Layers of a `Distribution`: its estimate (None: not drawn), each p-region, the heatmap."""
    layers = DistributionLayers()
    if estimate:
        lat, lon = (float(v) for v in distribution.estimate(estimate))
        layers.estimate, layers.estimate_kind = (lat, lon), estimate
    for p in sorted(regions, reverse=True):
        region = distribution.region(p)
        geom = region.polygons().simplify(0.01, preserve_topology=True)
        layers.regions.append((float(p), geom, region.summary()))
    layers.heat_rings, layers.heat_density = heat_cells(distribution)
    return layers


def from_geojson(collection: dict[str, Any]) -> DistributionLayers:
    """Layers of a `Distribution.to_geojson` FeatureCollection (no heatmap: it has no cell mass)."""
    layers = DistributionLayers()
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise GeoalignError(
            "distribution GeoJSON must be a FeatureCollection (Distribution.to_geojson)"
        )
    for f in collection.get("features", []):
        props = f.get("properties") or {}
        if props.get("kind") == "estimate":
            lon, lat = f["geometry"]["coordinates"][:2]
            layers.estimate, layers.estimate_kind = (
                (float(lat), float(lon)),
                props.get("estimate", ""),
            )
        elif props.get("kind") == "region":
            geom = shape(f["geometry"])
            layers.regions.append((float(props["p"]), geom, str(props.get("summary", ""))))
    layers.regions.sort(key=lambda r: -r[0])
    return layers


def layers_of(
    distribution: Any, regions: tuple[float, ...] | None, estimate: str | None
) -> DistributionLayers | None:
    """`from_geojson` for a dict, `from_distribution` otherwise; None passes through."""
    if distribution is None:
        return None
    if isinstance(distribution, dict):
        return from_geojson(distribution)
    return from_distribution(distribution, tuple(regions or (0.5, 0.9)), estimate)


def outline_rings(geom: Any) -> list[np.ndarray]:
    """(lat, lon) rings of every exterior and hole of a (Multi)Polygon, for drawing lines."""
    rings = shapely.get_parts(shapely.boundary(shapely.get_parts(geom)))
    return [np.asarray(shapely.get_coordinates(r))[:, ::-1] for r in rings]
