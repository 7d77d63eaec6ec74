"""Maps: the PNG is a real picture with borders where the polygons are; the HTML holds the markers."""

import re

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from geoalign.geo.distance import haversine_km
from geoalign.geo.maps import (
    LAND,
    SEA,
    auto_extent,
    great_circle,
    render_static_map,
    save_interactive_map,
    save_static_map,
)
from geoalign.geo.regions import load_countries

PRED = np.array([[48.8566, 2.3522], [45.7640, 4.8357], [43.2965, 5.3698]])
PROBS = np.array([0.5, 0.3, 0.2])
TRUTH = (47.2184, -1.5536)  # Nantes
EXTENT = (-6.0, 10.0, 41.0, 52.0)  # France


def _rgb(hex_color):
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _pixel(fig, lat, lon):
    """(row, col) of a lat/lon point in the saved picture (rows grow downwards)."""
    ax = fig.axes[0]
    x, y = ax.transData.transform((lon, lat))
    height = fig.get_size_inches()[1] * fig.dpi
    return int(round(height - y)), int(round(x))


def test_png_size_and_validity(tmp_path):
    path = save_static_map(tmp_path / "m.png", PRED, PROBS, truth=TRUTH, size_px=(640, 360))
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (640, 360)


def test_png_has_borders_land_and_sea_where_expected(tmp_path):
    fig = render_static_map(PRED, PROBS, extent=EXTENT, size_px=(800, 550), label_top=0)
    path = tmp_path / "fr.png"
    fig.savefig(path, dpi=fig.dpi, facecolor=fig.get_facecolor())
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (550, 800, 3)

    def near(lat, lon, color, radius=0):
        r, c = _pixel(fig, lat, lon)
        patch = img[max(r - radius, 0) : r + radius + 1, max(c - radius, 0) : c + radius + 1]
        return np.abs(patch - _rgb(color)).sum(axis=-1).min() <= 12

    assert near(45.5, -4.0, SEA)  # Bay of Biscay
    assert near(46.5, 1.0, LAND)  # central France, away from the markers
    # Pixels on border vertices (France/Switzerland, France/Spain) are drawn darker than land or sea.
    atlas = load_countries()
    fr = shapely.union_all(atlas.geometries[atlas.resolve("FR")])
    ch = shapely.union_all(atlas.geometries[atlas.resolve("CH")])
    shared = shapely.get_coordinates(shapely.intersection(fr.boundary, ch.buffer(0.01)))
    assert len(shared) > 10
    for lon, lat in shared[:: max(len(shared) // 5, 1)]:
        r, c = _pixel(fig, lat, lon)
        patch = img[r - 1 : r + 2, c - 1 : c + 2]
        darkest = patch.sum(axis=-1).min()
        assert darkest < _rgb(LAND).sum() - 60, (lat, lon)


def test_png_without_borders_has_no_land(tmp_path):
    fig = render_static_map(PRED, extent=EXTENT, size_px=(400, 300), borders=False, label_top=0)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    r, c = _pixel(fig, 46.5, 1.0)
    assert np.abs(img[r, c] - _rgb(SEA)).sum() <= 12


def test_png_marks_truth_and_error_line(tmp_path):
    fig = render_static_map(PRED, PROBS, truth=TRUTH, extent=EXTENT, size_px=(800, 550))
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    red = np.abs(img - _rgb("#d62728")).sum(axis=-1) < 40
    r, c = _pixel(fig, *TRUTH)
    assert red[r - 3 : r + 4, c - 3 : c + 4].any()  # the star
    mid_lat, mid_lon = great_circle(TRUTH, PRED[0], n=3)[0][1]
    r, c = _pixel(fig, mid_lat, mid_lon)
    assert red[r - 3 : r + 4, c - 3 : c + 4].any()  # the dashed error line passes mid-way
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    err = haversine_km(*TRUTH, *PRED[0])
    assert any(f"{err:,.0f} km" in t for t in legend)


def test_html_contains_markers_and_popups(tmp_path):
    path = save_interactive_map(tmp_path / "m.html", PRED, PROBS, truth=TRUTH, title="Top-3 <test>")
    text = path.read_text(encoding="utf-8")
    for lat, lon in PRED:  # GeoJSON order: lon, lat
        assert re.search(rf"\[{lon},\s*{lat}\]", text), (lat, lon)
    assert re.search(rf"\[{TRUTH[1]},\s*{TRUTH[0]}\]", text)
    assert "p = 0.5000" in text and "Paris" in text and "Lyon" in text
    assert "Top-3 &lt;test&gt;" in text  # escaped title
    assert "top-1 error" in text


def test_html_without_places_or_probs(tmp_path):
    path = save_interactive_map(tmp_path / "m.html", PRED[:1], places=False)
    text = path.read_text(encoding="utf-8")
    assert re.search(r"\[2.3522,\s*48.8566\]", text) and "</b><br>p = " not in text


@settings(max_examples=100, deadline=None)
@given(st.floats(-89, 89), st.floats(-180, 180), st.floats(-89, 89), st.floats(-180, 180))
def test_great_circle_arcs(lat1, lon1, lat2, lon2):
    segments = great_circle((lat1, lon1), (lat2, lon2), n=50)
    pts = np.vstack(segments)
    assert len(pts) == 50
    # ends are the end points; no drawn piece jumps across the map
    assert haversine_km(*pts[0], lat1, lon1) < 1e-3 and haversine_km(*pts[-1], lat2, lon2) < 1e-3
    for seg in segments:
        assert (np.abs(np.diff(seg[:, 1])) <= 180).all()
    # the arc is the shortest path: its length equals the great-circle distance
    steps = haversine_km(pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1]).sum()
    assert steps == pytest.approx(float(haversine_km(lat1, lon1, lat2, lon2)), rel=1e-6, abs=1e-3)


def test_great_circle_splits_at_date_line():
    segments = great_circle((-17.0, 178.0), (-14.0, -172.0))
    assert len(segments) == 2
    assert (segments[0][:, 1] > 170).all() and (segments[1][:, 1] < -170).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-60, 60), st.floats(-170, 170)), min_size=1, max_size=6))
def test_auto_extent_contains_points(points):
    pts = np.array(points)
    min_lon, max_lon, min_lat, max_lat = auto_extent(pts, aspect=2.0)
    assert -180 <= min_lon < max_lon <= 180 and -90 <= min_lat < max_lat <= 90
    assert (pts[:, 1] >= min_lon - 1e-9).all() and (pts[:, 1] <= max_lon + 1e-9).all()
    assert (pts[:, 0] >= min_lat - 1e-9).all() and (pts[:, 0] <= max_lat + 1e-9).all()
