"""Maps draw a prediction's distribution (heatmap, region outlines, estimate) and PNG labels say
rank, probability and place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from geoalign.geo.maplayers import from_distribution, from_geojson, region_colour
from geoalign.geo.maps import format_prob, render_static_map, save_interactive_map
from geoalign.inference.distribution import CellGrid, Distribution
from geoalign.inference.prediction import Candidate, Prediction

PRED = np.array([[48.8566, 2.3522], [45.7640, 4.8357], [43.2965, 5.3698]])


@pytest.fixture(scope="module")
def dist() -> Distribution:
    rng = np.random.default_rng(0)
    paris = rng.normal([48.85, 2.35], [1.0, 1.5], (300, 2))
    world = rng.uniform([-60, -180], [70, 180], (500, 2))
    weights = np.concatenate([np.full(300, 5.0), np.full(500, 0.01)])
    return Distribution(CellGrid(np.vstack([paris, world])), weights)


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.axes[0].texts)


def test_png_labels_give_rank_probability_and_place():
    probs = [0.0031, 0.0012, 0.00004]  # top-k of a 100K gallery: all "0.00" before
    fig = render_static_map(PRED, probs, places=["Paris, France", "Lyon, France", "Marseille"])
    text = _texts(fig)
    assert "1.  0.31%  Paris, France" in text and "2.  0.12%  Lyon, France" in text
    assert "3.  4e-05  Marseille" in text and "0.00" not in text


def test_png_candidates_on_one_spot_share_one_label():
    same = np.array([[35.68, 139.76], [35.68, 139.76], [45.0, 5.0], [35.68, 139.76]])
    fig = render_static_map(same, [0.4, 0.3, 0.2, 0.1], places=False)
    numbers = [t.get_text() for t in fig.axes[0].texts if "." not in t.get_text()]
    assert sorted(numbers) == ["1,2,4", "3"]


def test_png_labels_look_places_up_by_default():
    text = _texts(render_static_map(PRED[:1], [0.9]))
    assert "Paris" in text and "France" in text and "90%" in text


@pytest.mark.parametrize(
    ("p", "text"), [(0.42, "42%"), (0.031, "3.1%"), (0.0027, "0.27%"), (4e-5, "4e-05")]
)
def test_format_prob(p, text):
    assert format_prob(p) == text


def test_png_draws_heatmap_regions_and_estimate(dist):
    fig = render_static_map(PRED, [0.5, 0.3, 0.2], places=False, distribution=dist)
    ax = fig.axes[0]
    heat = [
        c for c in ax.collections if isinstance(c, PolyCollection) and c.get_array() is not None
    ]
    assert len(heat) == 1 and len(heat[0].get_paths()) > 10
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("90% region:") for t in legend)
    assert any(t.startswith("50% region:") for t in legend)
    assert "median estimate" in legend
    outline_colours = {line.get_color() for line in ax.lines}
    assert {region_colour(0), region_colour(1)} <= outline_colours
    # the view is around the region, not the whole world
    x0, x1 = ax.get_xlim()
    assert x1 - x0 < 60


def test_geojson_gives_the_same_outlines_and_estimate(dist):
    a = from_distribution(dist, (0.5, 0.9), "median")
    b = from_geojson(json.loads(json.dumps(dist.to_geojson((0.5, 0.9), "median"))))
    assert [p for p, _, _ in a.regions] == [p for p, _, _ in b.regions] == [0.9, 0.5]
    assert np.allclose(a.estimate, b.estimate)
    for (_, ga, _), (_, gb, _) in zip(a.regions, b.regions, strict=True):
        assert ga.symmetric_difference(gb).area < 0.01 * ga.area
    assert b.heat_rings == []  # no cell mass in GeoJSON


def test_html_draws_heatmap_regions_and_estimate(dist, tmp_path):
    path = save_interactive_map(
        tmp_path / "m.html", PRED, [0.5, 0.3, 0.2], places=False, distribution=dist
    )
    text = path.read_text(encoding="utf-8")
    data = text.split('id="geoalign-map-data">', 1)[1].split("</script>", 1)[0]
    layers = {layer["name"]: layer for layer in json.loads(data)["layers"] if layer["name"]}
    assert {"candidates", "heatmap", "90% region", "50% region", "estimate"} <= set(layers)
    assert len(layers["heatmap"]["data"]["features"]) > 10
    region = layers["90% region"]["data"]["features"][0]
    assert region["geometry"]["type"] in {"Polygon", "MultiPolygon"}
    assert "90% region:" in region["properties"]["popup"]


def test_predict_maps_pass_the_distribution(dist, tmp_path):
    from geoalign.cli.predict import _write_maps

    cands = [
        Candidate(float(a), float(b), p, i)
        for i, ((a, b), p) in enumerate(zip(PRED, [0.5, 0.3, 0.2], strict=True))
    ]
    pred = Prediction(source="x.jpg", candidates=cands, distribution=dist)
    html, png = tmp_path / "m.html", tmp_path / "m.png"
    _write_maps([pred], html, png, regions=(0.7,), estimate="mean")
    text = html.read_text(encoding="utf-8")
    assert '"70% region"' in text and "mean estimate" in text and '"heatmap"' in text
    assert png.stat().st_size > 1000
