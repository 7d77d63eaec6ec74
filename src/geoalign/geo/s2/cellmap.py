"""HTML maps of S2 cells coloured by sample count: `save_cell_map` (what `geoalign cells` writes:
offline, Leaflet inlined through `geoalign.geo.webmap`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoalign.geo.s2 import ids as s2ids
from geoalign.geo.s2.partition import Partition
from geoalign.geo.webmap import WebMap, colour_scale, legend_bar


def _points_per_edge(levels: np.ndarray) -> np.ndarray:
    # Big cells have visibly curved edges in lat/lon; small ones are drawn by their corners.
    return np.select([levels <= 4, levels <= 8], [16, 4], default=1)


def cell_features(partition: Partition) -> list[dict]:
    """GeoJSON features (lon/lat rings) with class_index, token, level, count as properties."""
    features: list[dict] = []
    levels = partition.levels
    tokens = partition.tokens
    per_edge = _points_per_edge(levels)
    for n in np.unique(per_edge):
        idx = np.flatnonzero(per_edge == n)
        rings = s2ids.cell_polygons(partition.cell_ids[idx], points_per_edge=int(n))
        for k, ring in zip(idx, rings, strict=True):
            coords = np.round(ring[:, ::-1], 5).tolist()
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [coords]},
                    "properties": {
                        "class_index": int(k),
                        "token": tokens[k],
                        "level": int(levels[k]),
                        "count": int(partition.counts[k]),
                    },
                }
            )
    features.sort(key=lambda f: f["properties"]["class_index"])
    return features


def save_cell_map(
    path: str | Path,
    features: Sequence[dict],
    *,
    tiles: str | None = None,
    title: str | None = None,
) -> Path:
    """Write an offline HTML map of S2 cells (`geoalign.geo.s2.cellmap.cell_features`), coloured
    by log10 of their sample count, with a tooltip per cell."""
    counts = np.array([max(int(f["properties"]["count"]), 1) for f in features], dtype=np.float64)
    logs = np.log10(counts) if len(counts) else np.zeros(0)
    lo = float(logs.min(initial=0.0))
    hi = max(float(logs.max(initial=1.0)), lo + 1e-6)
    colours = colour_scale(logs, "RdYlBu_r", lo, hi)
    drawn = []
    for f, colour in zip(features, colours, strict=True):
        props = f["properties"]
        tip = ", ".join(f"{k} {props[k]}" for k in ("class_index", "token", "level", "count"))
        drawn.append({**f, "properties": {"style": {"fillColor": colour}, "tooltip": tip}})
    page = WebMap(title=title, tiles=tiles, max_zoom=6)
    page.add(drawn, name="cells", style={"color": "#333333", "weight": 0.5, "fillOpacity": 0.45})
    page.legend = legend_bar("log10(samples per cell)", "RdYlBu_r", lo, hi)
    return page.save(path)
