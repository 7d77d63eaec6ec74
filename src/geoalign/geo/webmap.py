"""Self-contained Leaflet HTML pages: one file that opens anywhere, with no network.

Leaflet's JS and CSS (vendored from npm into `geoalign/assets/web`) are inlined, and the base layer
is the Natural Earth country polygons (`geoalign.geo.regions`), simplified, instead of tiles from a
server. A tile URL can still be given (`tiles=`) by users who have a tile server. Layers are GeoJSON
FeatureCollections; a feature's `style`, `popup` (HTML, escaped by the caller), `tooltip` (text)
and `symbol` (a character drawn instead of a circle) properties say how it is drawn.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geoalign.errors import GeoalignError

LEAFLET_DIR = "leaflet-1.9.4"
LAND = "#f2efe9"
SEA = "#d6e6f4"
BORDER = "#9a9a9a"
# ~5 km: coastlines read well down to zoom 7 and the layer stays under 1 MB of GeoJSON.
BASE_TOLERANCE_DEG = 0.05

_SCRIPT = """
(function () {
  var spec = JSON.parse(document.getElementById("geoalign-map-data").textContent);
  var map = L.map("map", {worldCopyJump: true, preferCanvas: true});
  if (spec.tiles) {
    L.tileLayer(spec.tiles.url, {attribution: spec.tiles.attribution, maxZoom: 19}).addTo(map);
  }
  var overlays = {};
  spec.layers.forEach(function (layer) {
    var base = layer.style || {};
    function styleOf(f) {
      return Object.assign({}, base, (f.properties && f.properties.style) || {});
    }
    var group = L.geoJSON(layer.data, {
      interactive: layer.interactive !== false,
      style: styleOf,
      pointToLayer: function (f, latlng) {
        var p = f.properties || {};
        if (p.symbol) {
          var size = (p.style && p.style.size) || 22;
          var icon = L.divIcon({
            className: "geoalign-symbol",
            html: '<span style="color:' + ((p.style && p.style.color) || "#000") +
              ";font-size:" + size + 'px">' + p.symbol + "</span>",
            iconSize: [size, size], iconAnchor: [size / 2, size / 2]
          });
          return L.marker(latlng, {icon: icon, zIndexOffset: 1000});
        }
        return L.circleMarker(latlng, styleOf(f));
      },
      onEachFeature: function (f, l) {
        var p = f.properties || {};
        if (p.popup) { l.bindPopup(p.popup, {maxWidth: 320}); }
        if (p.tooltip) { l.bindTooltip(p.tooltip); }
      }
    }).addTo(map);
    if (layer.name) { overlays[layer.name] = group; }
  });
  if (Object.keys(overlays).length > 1) {
    L.control.layers(null, overlays, {collapsed: false}).addTo(map);
  }
  if (spec.legend) {
    var legend = L.control({position: "bottomright"});
    legend.onAdd = function () {
      var div = L.DomUtil.create("div", "geoalign-legend");
      div.innerHTML = spec.legend;
      return div;
    };
    legend.addTo(map);
  }
  L.control.scale().addTo(map);
  map.fitBounds(spec.bounds, {padding: [30, 30], maxZoom: spec.max_zoom});
})();
"""

_STYLE = """
html, body { height: 100%; margin: 0; font-family: sans-serif; }
#map { position: absolute; top: TOPpx; bottom: 0; left: 0; right: 0; background: SEA; }
h3.geoalign-title { text-align: center; margin: 4px; font-size: 16px; }
.geoalign-symbol { background: none; border: none; text-align: center; line-height: 1;
  text-shadow: 0 0 2px #fff, 0 0 2px #fff; }
.geoalign-legend { background: rgba(255, 255, 255, 0.85); padding: 6px 8px; font-size: 12px;
  border-radius: 4px; line-height: 1.4; }
"""


def _asset(name: str) -> str:
    path = importlib.resources.files("geoalign").joinpath("assets", "web", LEAFLET_DIR, name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:  # a broken install: the package data was left out
        raise GeoalignError(
            f"map asset missing: geoalign/assets/web/{LEAFLET_DIR}/{name} (reinstall geoalign)"
        ) from err


@functools.lru_cache(maxsize=4)
def base_layer(tolerance_deg: float = BASE_TOLERANCE_DEG) -> dict[str, Any]:
    """The world's countries as one GeoJSON FeatureCollection, simplified to `tolerance_deg` and
    rounded to 0.01 degrees; computed once per process (about a second)."""
    from geoalign.geo.regions import load_countries

    atlas = load_countries()
    geoms = shapely.simplify(atlas.geometries, tolerance_deg, preserve_topology=True)
    geoms = shapely.set_precision(geoms, 0.01)
    features = [
        {"type": "Feature", "geometry": json.loads(shapely.to_geojson(g)), "properties": {}}
        for g in geoms
        if not shapely.is_empty(g)
    ]
    return {"type": "FeatureCollection", "features": features}


def check_tile_url(url: str) -> str:
    """A tile URL template must hold {z}, {x} and {y} (Leaflet's placeholders)."""
    if not all(k in url for k in ("{z}", "{x}", "{y}")):
        raise GeoalignError(
            f"tile URL {url!r} must be a template with {{z}}, {{x}} and {{y}}, e.g. "
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
        )
    return url


@dataclass
class WebMap:
    """A Leaflet page being put together: overlay layers, bounds, a title and a legend."""

    title: str | None = None
    tiles: str | None = None
    tile_attribution: str = ""
    base: bool = True
    max_zoom: int = 8
    layers: list[dict[str, Any]] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    legend: str = ""

    def add(
        self,
        features: Sequence[dict[str, Any]],
        *,
        name: str | None = None,
        style: dict[str, Any] | None = None,
        interactive: bool = True,
        fit: bool = True,
    ) -> None:
        """Add GeoJSON features as one layer (named layers can be switched on and off); with
        `fit`, the view is fitted around them."""
        features = list(features)
        self.layers.append(
            {
                "name": name,
                "style": style or {},
                "interactive": interactive,
                "data": {"type": "FeatureCollection", "features": features},
            }
        )
        if fit:
            for f in features:
                self.points += [(lat, lon) for lon, lat in _positions(f["geometry"]["coordinates"])]

    def bounds(self) -> list[list[float]]:
        if not self.points:
            return [[-60.0, -180.0], [80.0, 180.0]]
        pts = np.asarray(self.points)
        return [
            [float(pts[:, 0].min()), float(pts[:, 1].min())],
            [float(pts[:, 0].max()), float(pts[:, 1].max())],
        ]

    def html(self) -> str:
        """The whole page as one string: Leaflet, the data and the script inlined."""
        layers = list(self.layers)
        if self.base:
            base = {
                "name": None,
                "style": {"color": BORDER, "weight": 0.6, "fillColor": LAND, "fillOpacity": 1.0},
                "interactive": False,
                "data": base_layer(),
            }
            layers.insert(0, base)
        spec: dict[str, Any] = {
            "layers": layers,
            "bounds": self.bounds(),
            "max_zoom": self.max_zoom,
            "legend": self.legend,
            "tiles": None,
        }
        if self.tiles:
            spec["tiles"] = {
                "url": check_tile_url(self.tiles),
                "attribution": self.tile_attribution,
            }
        # "</" inside a <script> block would end it; "<\/" is the same JSON string.
        data = json.dumps(spec, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        heading = f'<h3 class="geoalign-title">{html.escape(self.title)}</h3>' if self.title else ""
        style = _STYLE.replace("TOP", "30" if self.title else "0").replace("SEA", SEA)
        return (
            '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(self.title or 'geoalign map')}</title>\n"
            f"<style>\n{_asset('leaflet.css')}\n</style>\n<style>{style}</style>\n"
            f"<script>\n{_asset('leaflet.js')}\n</script>\n</head>\n<body>\n{heading}\n"
            '<div id="map"></div>\n'
            f'<script type="application/json" id="geoalign-map-data">{data}</script>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the page atomically; returns the path."""
        from geoalign.io_atomic import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.html().encode("utf-8")
        atomic_write(path, lambda fh: fh.write(data))
        return path


def _positions(coords: Any) -> list[tuple[float, float]]:
    """Every (lon, lat) position in a GeoJSON coordinates array, at any nesting depth."""
    if coords and isinstance(coords[0], (int, float)):
        return [(float(coords[0]), float(coords[1]))]
    return [pos for c in coords for pos in _positions(c)]


def point_feature(lat: float, lon: float, **properties: Any) -> dict[str, Any]:
    """A GeoJSON Point feature (GeoJSON order: lon, lat)."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
        "properties": properties,
    }


def line_feature(latlon: np.ndarray, **properties: Any) -> dict[str, Any]:
    """A GeoJSON LineString through (lat, lon) rows."""
    coords = [[float(lon), float(lat)] for lat, lon in np.asarray(latlon)]
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coords},
        "properties": properties,
    }


def colour_scale(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> list[str]:
    """Hex colours of `values` on a matplotlib colour map between vmin and vmax."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    t = (np.asarray(values, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    rgba = colormaps[cmap](np.clip(t, 0.0, 1.0))
    return [to_hex(c) for c in rgba]


def legend_bar(caption: str, cmap: str, vmin: float, vmax: float, fmt: str = "{:.2g}") -> str:
    """HTML for a small colour bar: five swatches from vmin to vmax with the end values."""
    stops = np.linspace(vmin, vmax, 5)
    swatches = "".join(
        f'<span style="display:inline-block;width:18px;height:10px;background:{c}"></span>'
        for c in colour_scale(stops, cmap, vmin, vmax)
    )
    return (
        f"<b>{html.escape(caption)}</b><br>{swatches}<br>"
        f"{html.escape(fmt.format(vmin))} &ndash; {html.escape(fmt.format(vmax))}"
    )
