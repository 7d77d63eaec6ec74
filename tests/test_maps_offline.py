"""HTML maps open with no network: Leaflet inlined, no CDN script/link/CSS URL, no tile server
unless one is given."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from geoalign.errors import GeoalignError
from geoalign.geo.maps import save_interactive_map
from geoalign.geo.s2.cellmap import save_cell_map
from geoalign.geo.webmap import WebMap, base_layer

PRED = [(48.8566, 2.3522), (45.764, 4.8357)]
TILES = "https://tiles.example.org/{z}/{x}/{y}.png"
_CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*(https?://[^'")\s]+)""", re.I)


class _Resources(HTMLParser):
    """Every URL the page would fetch: script src, link href, CSS url()/@import, and the text of
    inline scripts (tile URLs live in the map's data)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])
        if tag in {"img", "iframe"} and a.get("src"):
            self.urls.append(a["src"])
        if a.get("style"):
            self.urls += _CSS_URL.findall(a["style"])
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.urls += _CSS_URL.findall(data)
        elif self._in == "script":
            self.scripts.append(data)


def _parse(path) -> _Resources:
    parser = _Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _remote(urls: list[str]) -> list[str]:
    return [u for u in urls if re.match(r"(?i)\s*(https?:)?//", u)]


def test_prediction_map_needs_no_network(tmp_path):
    page = _parse(save_interactive_map(tmp_path / "m.html", PRED, [0.6, 0.4], places=False))
    assert _remote(page.urls) == []
    assert any("Leaflet 1.9.4" in s for s in page.scripts)
    assert not any("{z}" in s for s in page.scripts)  # no tile layer
    assert not any(re.search(r"cdn|jquery|bootstrap", u, re.I) for u in page.urls)


def test_base_layer_draws_countries():
    features = base_layer()["features"]
    assert len(features) > 200
    assert all(f["geometry"]["type"] in {"Polygon", "MultiPolygon"} for f in features)


def test_given_tile_url_is_the_only_remote_reference(tmp_path):
    path = save_interactive_map(tmp_path / "m.html", PRED, places=False, tiles=TILES)
    page = _parse(path)
    assert _remote(page.urls) == []
    assert TILES in path.read_text(encoding="utf-8")


def test_bad_tile_url_is_refused(tmp_path):
    with pytest.raises(GeoalignError, match=r"\{z\}"):
        save_interactive_map(tmp_path / "m.html", PRED, places=False, tiles="OpenStreetMap")


def test_cell_map_needs_no_network(tmp_path):
    ring = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
    cell = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"class_index": 0, "token": "1f", "level": 3, "count": 42},
    }
    path = save_cell_map(tmp_path / "c.html", [cell])
    page = _parse(path)
    assert _remote(page.urls) == [] and any("Leaflet 1.9.4" in s for s in page.scripts)
    assert "token 1f" in path.read_text(encoding="utf-8")


def test_script_end_tag_in_data_cannot_break_the_page(tmp_path):
    page = WebMap(title="</script><b>x</b>", base=False)
    page.add(
        [{"type": "Feature", "geometry": None, "properties": {"popup": "</script>y"}}], fit=False
    )
    text = page.html()
    assert "</script><b>" not in text and "&lt;/script&gt;" in text
    assert "</script>y" not in text and "<\\/script>y" in text


def test_cells_show_map_is_offline_and_takes_a_tile_url(tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from geoalign.cli import app
    from geoalign.geo.cells import CellHierarchy, PartitionRules

    rng = np.random.default_rng(0)
    lat, lon = 48.85 + rng.normal(size=500), 2.35 + rng.normal(size=500)
    folder = tmp_path / "cells"
    CellHierarchy.build(lat, lon, (400, 100), PartitionRules(tau_min=5)).save(folder)
    runner = CliRunner()
    res = runner.invoke(app, ["cells", "show", str(folder), "--map", str(tmp_path / "a.html")])
    assert res.exit_code == 0, res.output
    page = _parse(tmp_path / "a.html")
    assert _remote(page.urls) == [] and not any("{z}" in s for s in page.scripts)
    args = ["cells", "show", str(folder), "--map", str(tmp_path / "b.html"), "--tiles", TILES]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert TILES in (tmp_path / "b.html").read_text(encoding="utf-8")
    res = runner.invoke(app, [*args[:-1], "osm"])
    assert res.exit_code == 2 and "--tiles" in res.output and "{z}" in res.output
