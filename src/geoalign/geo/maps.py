"""Maps of predictions: a static PNG drawn offline, and an interactive HTML page.

Neither needs tiles or a network: country borders come from the Natural Earth polygons shipped with
geoalign's dependencies, and the HTML page inlines Leaflet (`geoalign.geo.webmap`), so it opens
anywhere. A tile server can be named with `tiles=` for the HTML map.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
import shapely.geometry

from geoalign.geo.coords import as_latlon_array
from geoalign.geo.distance import haversine_km
from geoalign.geo.maplayers import (
    HEAT_DECADES,
    DistributionLayers,
    layers_of,
    outline_rings,
    region_colour,
)
from geoalign.geo.webmap import WebMap, colour_scale, legend_bar, line_feature, point_feature

LAND = "#f2efe9"
SEA = "#d6e6f4"
BORDER = "#7a7a7a"
TRUTH = "#d62728"
ERROR_LINE = "#d62728"
HEAT_CMAP = "YlOrRd"


def great_circle(a: Sequence[float], b: Sequence[float], n: int = 64) -> list[np.ndarray]:
    """Points along the shorter great-circle arc from a to b (lat, lon), split at the date line so
    that each returned (M, 2) piece can be drawn as a straight polyline in lat/lon."""
    p, q = (np.radians(np.asarray(x, dtype=np.float64)) for x in (a, b))
    u = np.array([np.cos(p[0]) * np.cos(p[1]), np.cos(p[0]) * np.sin(p[1]), np.sin(p[0])])
    v = np.array([np.cos(q[0]) * np.cos(q[1]), np.cos(q[0]) * np.sin(q[1]), np.sin(q[0])])
    omega = np.arctan2(np.linalg.norm(np.cross(u, v)), u @ v)
    # w: unit vector along the arc's start, orthogonal to u (Gram-Schmidt); for antipodes every
    # great circle is shortest, so take one through a pole (or the equator, from a pole).
    w = v - (u @ v) * u
    if np.linalg.norm(w) < 1e-9:
        w = np.cross(u, [0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.cross(u, [1.0, 0.0, 0.0])
        w = np.cross(w, u)
    w = w / max(np.linalg.norm(w), 1e-300)
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = np.cos(t * omega) * u + np.sin(t * omega) * w
    lat = np.degrees(np.arcsin(np.clip(pts[:, 2], -1, 1)))
    lon = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    breaks = np.flatnonzero(np.abs(np.diff(lon)) > 180) + 1
    return [
        np.stack(seg, axis=1)
        for seg in zip(np.split(lat, breaks), np.split(lon, breaks), strict=True)
    ]


def auto_extent(latlon: np.ndarray, aspect: float, min_span_deg: float = 4.0) -> tuple[float, ...]:
    """(min_lon, max_lon, min_lat, max_lat) around the points, padded, matching the picture's
    width/height `aspect` (a degree of longitude drawn cos(latitude) times as wide as one of
    latitude). Falls back to the whole world when the points span more than half of it."""
    lat, lon = latlon[:, 0], latlon[:, 1]
    lon_span, lat_span = np.ptp(lon), np.ptp(lat)
    if lon_span > 180 or lat_span > 90:
        return (-180.0, 180.0, -90.0, 90.0)
    pad = 0.25
    lat_half = max(lat_span * (1 + pad), min_span_deg) / 2
    lat_c = float((lat.max() + lat.min()) / 2)
    lon_c = float((lon.max() + lon.min()) / 2)
    cos = max(np.cos(np.radians(np.clip(lat_c, -80, 80))), 0.1)
    lon_half = max(lon_span * (1 + pad), min_span_deg) / 2
    # grow the shorter side so that the box has the picture's aspect on the ground
    if lon_half * cos / lat_half < aspect:
        lon_half = lat_half * aspect / cos
    else:
        lat_half = lon_half * cos / aspect
    lat_half = min(lat_half, 90.0)
    lon_half = min(lon_half, 180.0)
    lat_c = float(np.clip(lat_c, -90 + lat_half, 90 - lat_half))
    lon_c = float(np.clip(lon_c, -180 + lon_half, 180 - lon_half))
    return (lon_c - lon_half, lon_c + lon_half, lat_c - lat_half, lat_c + lat_half)


def _border_artists(extent: tuple[float, ...], linewidth: float):
    from matplotlib.collections import LineCollection, PolyCollection

    from geoalign.geo.regions import load_countries

    min_lon, max_lon, min_lat, max_lat = extent
    span = max(max_lon - min_lon, max_lat - min_lat)
    window = shapely.box(min_lon - 1, min_lat - 1, max_lon + 1, max_lat + 1)
    geoms = load_countries().geometries
    geoms = geoms[shapely.intersects(geoms, window)]
    # simplify to about a pixel at a 2000 px wide picture: drawing 550K vertices is slow
    geoms = shapely.simplify(geoms, tolerance=span / 2000, preserve_topology=True)
    polygons = shapely.get_parts(geoms)
    shells = [np.asarray(shapely.get_coordinates(shapely.get_exterior_ring(p))) for p in polygons]
    rings = shapely.get_parts(shapely.boundary(polygons))
    lines = [np.asarray(shapely.get_coordinates(r)) for r in rings]
    fill = PolyCollection(shells, facecolors=LAND, edgecolors="none", zorder=1)
    edges = LineCollection(lines, colors=BORDER, linewidths=linewidth, zorder=2)
    return fill, edges


def render_static_map(
    predictions,
    probs: Sequence[float] | None = None,
    truth=None,
    *,
    extent: tuple[float, float, float, float] | str | None = None,
    size_px: tuple[int, int] = (1200, 600),
    dpi: int = 100,
    title: str | None = None,
    borders: bool = True,
    label_top: int = 5,
    places: Sequence | bool = True,
    distribution=None,
    regions: Sequence[float] | None = None,
    estimate: str | None = "median",
):
    """Draw predictions (K, 2) over country borders; returns a matplotlib Figure (not shown).

    probs colour and size the points; the top `label_top` are numbered on the map and listed in a
    box with probability and place (places: True looks them up offline, False omits them, or one
    name per prediction). truth (lat, lon) adds a star and a great-circle error line to the top-1
    prediction labelled with its length. distribution (a `Distribution` or its `to_geojson`)
    adds a heatmap of its smoothed density, the outlines of its `regions` p-regions and its
    `estimate` point. extent is (min_lon, max_lon, min_lat, max_lat), "world", or None for a
    box around everything drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred = as_latlon_array(predictions, source="predictions")
    truth_arr = None if truth is None else as_latlon_array(truth, source="truth")[:1]
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    if p is not None and len(p) != len(pred):
        from geoalign.errors import GeoalignError

        raise GeoalignError(f"{len(p)} probabilities for {len(pred)} predictions")
    layers = layers_of(distribution, tuple(regions) if regions else None, estimate)
    width, height = size_px
    if extent is None:
        everything = [pred[: max(label_top, 1)]]
        everything += [] if truth_arr is None else [truth_arr]
        everything += [] if layers is None else [layers.extent_points()]
        extent = auto_extent(np.vstack(everything), aspect=width / height)
    elif extent == "world":
        extent = (-180.0, 180.0, -90.0, 90.0)
    min_lon, max_lon, min_lat, max_lat = (float(v) for v in extent)

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=SEA)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor(SEA)
    ax.set_xlim(min_lon, max_lon)
    ax.set_ylim(min_lat, max_lat)
    ax.set_aspect("auto")
    ax.set_axis_off()
    if borders:
        fill, edges = _border_artists((min_lon, max_lon, min_lat, max_lat), linewidth=0.6)
        ax.add_collection(fill)
        ax.add_collection(edges)

    extra = [] if layers is None else _draw_layers(ax, fig, layers)

    size = 40.0 if p is None else 30.0 + 400.0 * p / max(float(p.max()), 1e-12)
    order = np.arange(len(pred))[::-1]  # draw rank 1 last, on top
    colour = (
        {"c": "#1f77b4"}
        if p is None
        else {"c": p[order], "cmap": "viridis", "vmin": 0.0, "vmax": max(float(p.max()), 1e-12)}
    )
    points = ax.scatter(
        pred[order, 1],
        pred[order, 0],
        s=size if p is None else size[order],
        **colour,
        edgecolors="black",
        linewidths=0.6,
        zorder=4,
        label="predictions",
    )
    _label_ranks(ax, pred, p, _place_names(pred[:label_top], places), label_top)
    if truth_arr is not None:
        t = truth_arr[0]
        for seg in great_circle(t, pred[0]):
            ax.plot(seg[:, 1], seg[:, 0], color=ERROR_LINE, linewidth=1.5, linestyle="--", zorder=3)
        err = float(haversine_km(t[0], t[1], pred[0, 0], pred[0, 1]))
        ax.scatter(
            [t[1]],
            [t[0]],
            marker="*",
            s=260,
            c=TRUTH,
            edgecolors="black",
            linewidths=0.7,
            zorder=5,
            label=f"truth (top-1 error {err:,.0f} km)",
        )
    if p is not None:
        # an inset bar, so that the map keeps filling the picture (pixel <-> degree stays linear)
        cax = ax.inset_axes((0.93, 0.06, 0.012, 0.3))
        bar = fig.colorbar(points, cax=cax)
        bar.ax.tick_params(labelsize=8)
        bar.ax.set_title("p", fontsize=9)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, loc="lower left", fontsize=9, framealpha=0.85)
    if title:
        ax.set_title(title, y=0.95, fontsize=12, backgroundcolor=(1, 1, 1, 0.7))
    return fig


def format_prob(p: float) -> str:
    """A probability that stays readable when small: 42%, 3.1%, 0.27%, 0.07%, 4e-06."""
    if p >= 0.1:
        return f"{p:.0%}"
    if p >= 0.01:
        return f"{p:.1%}"
    if p >= 0.0001:
        return f"{p:.2%}"
    return f"{p:.0e}"


def _place_names(pred: np.ndarray, places: Sequence | bool) -> list[str]:
    if places is True:
        from geoalign.geo.places import nearest_places

        return [pl.short() for pl in nearest_places(pred)] if len(pred) else []
    if places is False:
        return [""] * len(pred)
    return [pl.short() if hasattr(pl, "short") else str(pl) for pl in list(places)[: len(pred)]]


def _label_ranks(ax, pred: np.ndarray, p, names: list[str], label_top: int) -> None:
    """Rank numbers beside the top points, and a box listing rank, probability and place."""
    n = min(label_top, len(pred))
    # candidates drawn on one spot share one label ("1,2,4"), so no number hides another
    spots: dict[tuple[float, float], list[int]] = {}
    for rank in range(n):
        spots.setdefault(tuple(np.round(pred[rank], 3).tolist()), []).append(rank)
    for ranks in list(spots.values())[::-1]:  # rank 1 drawn last, on top
        first = ranks[0]
        ax.annotate(
            ",".join(str(r + 1) for r in ranks),
            (pred[first, 1], pred[first, 0]),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=10,
            fontweight="bold",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    lines = []
    for rank in range(n):
        prob = "" if p is None else f"{format_prob(float(p[rank])):>6}  "
        place = (
            names[rank]
            if rank < len(names) and names[rank]
            else (f"{pred[rank, 0]:.3f}, {pred[rank, 1]:.3f}")
        )
        lines.append(f"{rank + 1}. {prob}{place}")
    if lines:
        ax.text(
            0.01,
            0.97,
            "\n".join(lines),
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=9,
            family="monospace",
            zorder=7,
            bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "#999999", "alpha": 0.85},
        )


def _draw_layers(ax, fig, layers: DistributionLayers) -> list:
    """Heat cells coloured by log density, region outlines, the estimate (a cross); returns the
    legend handles of the outlines and the estimate."""
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D

    if layers.heat_rings:
        logd = np.log10(np.maximum(layers.heat_density, 1e-300))
        hi = float(logd.max())
        heat = PolyCollection(
            [r[:, ::-1] for r in layers.heat_rings],
            array=logd,
            cmap=HEAT_CMAP,
            clim=(hi - HEAT_DECADES, hi),
            edgecolors="none",
            alpha=0.55,
            zorder=2.5,
        )
        ax.add_collection(heat)
        cax = ax.inset_axes((0.86, 0.06, 0.012, 0.3))
        bar = fig.colorbar(heat, cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.ax.set_title("log10\np/km²", fontsize=7)
    handles = []
    for i, (pr, geom, summary) in enumerate(layers.regions):
        colour = region_colour(i)
        for ring in outline_rings(geom):
            ax.plot(ring[:, 1], ring[:, 0], color=colour, linewidth=1.6, zorder=3.5)
        handles.append(Line2D([], [], color=colour, linewidth=1.6, label=summary or f"{pr:.0%}"))
    if layers.estimate is not None:
        lat, lon = layers.estimate
        ax.scatter([lon], [lat], marker="X", s=160, c="white", edgecolors="black", zorder=5.5)
        handles.append(
            Line2D(
                [],
                [],
                marker="X",
                color="black",
                markerfacecolor="white",
                linestyle="none",
                markersize=9,
                label=f"{layers.estimate_kind} estimate",
            )
        )
    return handles


def save_static_map(path: str | Path, predictions, probs=None, truth=None, **kwargs) -> Path:
    """Render `render_static_map` to a PNG of exactly size_px pixels; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = render_static_map(predictions, probs, truth, **kwargs)
    from geoalign.io_atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    return path


def interactive_map(
    predictions,
    probs: Sequence[float] | None = None,
    truth=None,
    *,
    places: Sequence | bool = True,
    tiles: str | None = None,
    title: str | None = None,
    distribution=None,
    regions: Sequence[float] | None = None,
    estimate: str | None = "median",
) -> WebMap:
    """An offline Leaflet page (`WebMap`) of the top-k predictions with popups (rank,
    probability, place, coordinates) over the country polygons.

    places: True looks names up offline (`geoalign.geo.places`), False omits them, or a list of
    `Place`/strings (one per prediction). tiles: an optional tile URL template
    (https://.../{z}/{x}/{y}.png) drawn under the countries; without it the page needs no network.
    distribution (a `Distribution` or its `to_geojson`) adds switchable layers: a heatmap of the
    smoothed density, the outlines of the `regions` p-regions, and the `estimate` point.
    """
    pred = as_latlon_array(predictions, source="predictions")
    truth_arr = None if truth is None else as_latlon_array(truth, source="truth")[0]
    p = None if probs is None else np.asarray(probs, dtype=np.float64).reshape(-1)
    if places is True:
        from geoalign.geo.places import nearest_places

        names = [str(pl) for pl in nearest_places(pred)]
    elif places is False:
        names = [""] * len(pred)
    else:
        names = [str(pl) for pl in places]

    page = WebMap(title=title, tiles=tiles, base=True)
    layers = layers_of(distribution, tuple(regions) if regions else None, estimate)
    if layers is not None:
        _add_web_layers(page, layers)
    pmax = 1.0 if p is None else max(float(p.max()), 1e-12)
    markers = []
    for rank in range(len(pred))[::-1]:  # rank 1 drawn last, on top
        lat, lon = float(pred[rank, 0]), float(pred[rank, 1])
        prob = "" if p is None else f"p = {p[rank]:.4f}<br>"
        popup = (
            f"<b>#{rank + 1}</b><br>{prob}{html.escape(names[rank])}"
            f"{'<br>' if names[rank] else ''}{lat:.5f}, {lon:.5f}"
        )
        radius = 6 if p is None else 5 + 15 * p[rank] / pmax
        style = {
            "radius": float(radius),
            "color": "black",
            "weight": 1,
            "fillColor": "#2c7fb8" if rank else "#f03b20",
            "fillOpacity": 0.85,
        }
        tip = f"#{rank + 1}" + ("" if p is None else f" p={p[rank]:.3f}")
        markers.append(point_feature(lat, lon, style=style, popup=popup, tooltip=tip))
    page.add(markers, name="candidates")
    if truth_arr is not None:
        err = float(haversine_km(truth_arr[0], truth_arr[1], pred[0, 0], pred[0, 1]))
        lines = [
            line_feature(seg, style={"color": ERROR_LINE, "weight": 2, "dashArray": "6"})
            for seg in great_circle(truth_arr, pred[0])
        ]
        popup = (
            f"<b>truth</b><br>{truth_arr[0]:.5f}, {truth_arr[1]:.5f}<br>top-1 error {err:,.1f} km"
        )
        star = point_feature(
            truth_arr[0],
            truth_arr[1],
            symbol="&#9733;",
            style={"color": TRUTH, "size": 24},
            popup=popup,
            tooltip="truth",
        )
        page.add([*lines, star], name="truth")
    return page


def _add_web_layers(page: WebMap, layers: DistributionLayers) -> None:
    """The heatmap (cells by log density), the region outlines and the estimate as page layers."""
    if layers.heat_rings:
        logd = np.log10(np.maximum(layers.heat_density, 1e-300))
        hi = float(logd.max())
        colours = colour_scale(logd, HEAT_CMAP, hi - HEAT_DECADES, hi)
        cells = [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [np.round(ring[:, ::-1], 4).tolist()],
                },
                "properties": {
                    "style": {"fillColor": c},
                    "tooltip": f"density {d:.3g} per km²",
                },
            }
            for ring, c, d in zip(layers.heat_rings, colours, layers.heat_density, strict=True)
        ]
        page.add(
            cells,
            name="heatmap",
            style={"stroke": False, "fillOpacity": 0.55},
            fit=False,
        )
        page.legend = legend_bar("log10 density (per km²)", HEAT_CMAP, hi - HEAT_DECADES, hi)
    for i, (pr, geom, summary) in enumerate(layers.regions):
        feature = {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(geom),
            "properties": {"popup": html.escape(summary or f"{pr:.0%} region")},
        }
        style = {"color": region_colour(i), "weight": 2, "fill": False}
        page.add([feature], name=f"{pr:.0%} region", style=style)
    if layers.estimate is not None:
        lat, lon = layers.estimate
        star = point_feature(
            lat,
            lon,
            symbol="&#10010;",
            style={"color": "#000000", "size": 22},
            popup=f"<b>{html.escape(layers.estimate_kind)} estimate</b><br>{lat:.5f}, {lon:.5f}",
            tooltip=f"{layers.estimate_kind} estimate",
        )
        page.add([star], name="estimate")


def save_interactive_map(path: str | Path, predictions, probs=None, truth=None, **kwargs) -> Path:
    """Write `interactive_map` as one self-contained HTML file (no network needed to view it)."""
    return interactive_map(predictions, probs, truth, **kwargs).save(path)
