"""The architecture's promises: every method is a Locator, the registry decides the method, and
`predict` and `evaluate` share one ranking path (same probabilities for the same inputs)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from geoalign.evaluation.harness import evaluate_model
from geoalign.evaluation.queries import Queries
from geoalign.evaluation.run import evaluate_checkpoint
from geoalign.geo.cells import CellHierarchy, PartitionRules
from geoalign.geo.s2.ids import cell_levels, parent_ids
from geoalign.inference.distribution import cell_areas_km2
from geoalign.inference.locator import Geolocator
from geoalign.models.base import Locator
from geoalign.models.base import logits as model_logits
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig
from geoalign.models.registry import checkpoint_method, load_model, methods
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def tiny_geoclip(in_dim: int = 12) -> GeoCLIP:
    torch.manual_seed(0)
    return GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
            ),
            image_head=ImageHeadConfig(in_dim=in_dim, hidden_dim=16, out_dim=8),
            queue_size=16,
            features="tiny-features",
        )
    )


def tiny_geosurge(in_dim: int = 12) -> GeoSurge:
    rng = np.random.default_rng(0)
    pts = rng.uniform([-50, -170], [60, 170], size=(2000, 2))
    hierarchy = CellHierarchy.build(
        pts[:, 0], pts[:, 1], tau_max=(800, 200), rules=PartitionRules(tau_min=20)
    )
    torch.manual_seed(0)
    cfg = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        embed_dim=8,
        feature_dim=in_dim,
        feature_head="linear",
        backbone="tiny-features",
    )
    return GeoSurge(cfg, hierarchy)


def tiny_concept(in_dim: int = 12) -> GeoCLIP:
    """Concept-aware GeoCLIP over 10 bundled concepts with random "CLIP" text (no text tower)."""
    from geoalign.data.concept_sets import load_concept_set
    from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig

    cset = load_concept_set("geography").select(10)
    text = torch.randn(10, in_dim, generator=torch.Generator().manual_seed(1))
    cfg = ConceptConfig(k=10, head_hidden=(16,), top_k=3)
    return ConceptAwareGeoCLIP.from_geoclip(tiny_geoclip(in_dim), cfg, cset, text, text_kind="clip")


MAKERS = {"geoclip": tiny_geoclip, "concept": tiny_concept, "geosurge": tiny_geosurge}


def test_every_registered_method_is_a_locator():
    assert {"geoclip", "concept", "geosurge"} <= set(methods())
    assert isinstance(tiny_geoclip(), Locator)
    assert isinstance(tiny_geosurge(), Locator)
    assert isinstance(tiny_concept(), Locator)


@pytest.mark.parametrize("method", ["geoclip", "concept", "geosurge"])
def test_predict_and_evaluate_give_the_same_probabilities(method, tmp_path):
    model = MAKERS[method]()
    if (
        method != "geosurge"
    ):  # past the clamp: predict once read the raw scale, evaluate the clamped
        with torch.no_grad():
            model.logit_scale.fill_(model.config.max_logit_scale + 1.5)
    path = model.save(tmp_path / "run" / "model")
    assert checkpoint_method(tmp_path / "run") == method  # a run folder resolves to model/
    assert type(load_model(path)) is type(model)
    rng = np.random.default_rng(1)
    gallery = pd.DataFrame(
        rng.uniform([-60, -180], [70, 180], size=(300, 2)), columns=["lat", "lon"]
    )
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    feats = torch.from_numpy(rng.normal(size=(40, 12)).astype(np.float32))
    truth = rng.uniform([-60, -180], [70, 180], size=(40, 2))

    geo = Geolocator.from_pretrained(str(path), backbone=None, gallery=gallery, cache=False)
    predicted = geo.predict_features(feats, top_k=1)
    run = evaluate_checkpoint(
        path,
        Queries(feats, truth, np.arange(40), "random rows"),
        benchmark="custom",
        out=tmp_path / "eval",
        gallery=str(tmp_path / "gallery.csv"),
        modes=["top1"],
        baselines=False,
    )
    (row,) = run.evaluation.results
    np.testing.assert_allclose(row.prob, [c[0].prob for c in predicted], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(row.latlon, [[c[0].lat, c[0].lon] for c in predicted])
    # the probabilities are the softmax of the model's own logits (one temperature)
    queries = geo.embed_features(feats)
    logits = model_logits(model, queries, geo.candidates)
    np.testing.assert_allclose(
        row.prob, torch.softmax(logits, -1).max(-1).values.detach().numpy(), rtol=1e-5
    )


def test_a_stored_calibration_gives_evaluate_the_probabilities_predict_gives(tmp_path):
    """A calibrated checkpoint (`geoalign calibrate`, or `train` on a validation split):
    evaluate applies the stored logit factor as predict does, so top-1 probabilities agree."""
    from geoalign.inference.calibration import Calibration, save_calibration

    path = tiny_geoclip().save(tmp_path / "model")
    save_calibration(path, Calibration(scale=0.37, level=5, fitted_on="test rows"))
    rng = np.random.default_rng(2)
    gallery = pd.DataFrame(rng.uniform([-60, -180], [70, 180], (300, 2)), columns=["lat", "lon"])
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    feats = torch.from_numpy(rng.normal(size=(30, 12)).astype(np.float32))
    truth = rng.uniform([-60, -180], [70, 180], size=(30, 2))
    geo = Geolocator.from_pretrained(str(path), backbone=None, gallery=gallery, cache=False)
    predicted = [c[0].prob for c in geo.predict_features(feats, top_k=1)]
    run = evaluate_checkpoint(
        path,
        Queries(feats, truth, np.arange(30), "random rows"),
        benchmark="custom",
        out=tmp_path / "eval",
        gallery=str(tmp_path / "gallery.csv"),
        modes=["top1"],
        baselines=False,
    )
    (row,) = run.evaluation.results
    np.testing.assert_allclose(row.prob, predicted, rtol=1e-5, atol=1e-7)
    uncalibrated = Geolocator.from_pretrained(str(path), backbone=None, gallery=gallery)
    uncalibrated.set_calibration(None)
    plain = [c[0].prob for c in uncalibrated.predict_features(feats, top_k=1)]
    assert not np.allclose(row.prob, plain)  # the factor did change them


def test_load_model_returns_each_methods_class(tmp_path):
    geoclip_dir = tiny_geoclip().save(tmp_path / "g")
    surge_dir = tiny_geosurge().save(tmp_path / "s")
    assert type(load_model(geoclip_dir)) is GeoCLIP
    loaded = load_model(surge_dir)
    assert type(loaded) is GeoSurge and loaded.reads == "features"
    (top1,) = evaluate_model(loaded, torch.randn(5, 12), np.zeros((5, 2)), modes=["top1"])
    assert top1.name.endswith("(top-1 cell)")


def test_feature_width_mismatch_is_a_clear_error(tmp_path):
    from geoalign.errors import DataError

    geo = Geolocator(tiny_geoclip(), gallery=np.zeros((3, 2)), cache=False)
    with pytest.raises(DataError, match="reads 12-d features .*these are 7-d"):
        geo.predict_features(torch.randn(2, 7))


def test_inference_path_imports_no_lightning():
    code = (
        "import sys, geoalign.inference.locator, geoalign.models.registry, "
        "geoalign.evaluation.harness; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'geoalign.training') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("method", ["geoclip", "geosurge"])
def test_distributions_and_estimates_through_the_harness(method):
    model = tiny_geoclip() if method == "geoclip" else tiny_geosurge()
    rng = np.random.default_rng(2)
    gallery = rng.uniform([-60, -180], [70, 180], size=(200, 2))
    feats = torch.from_numpy(rng.normal(size=(12, 12)).astype(np.float32))
    truth = rng.uniform([-60, -180], [70, 180], size=(12, 2))
    geo = Geolocator(model, gallery=gallery, cache=False)
    dists = geo.distributions(geo.embed_features(feats))
    if method == "geosurge":  # geocells coarser than the smoothing level spread over their area
        assert geo.candidates.cells is not None and dists[0].grid.spread is not None
        fine = model.hierarchy.partitions[-1]
        assert dists[0].grid.area_km2.sum() == pytest.approx(
            cell_areas_km2(fine.cell_ids[cell_levels(fine.cell_ids) <= 6]).sum()
            + cell_areas_km2(
                np.unique(parent_ids(fine.cell_ids[cell_levels(fine.cell_ids) > 6], 6))
            ).sum()
        )
    top1, median, mean = evaluate_model(
        geo, feats, truth, modes=["top1", "median", "mean"], regions=(0.5, 0.9)
    )
    np.testing.assert_allclose(median.latlon, [d.estimate("median") for d in dists])
    np.testing.assert_allclose(mean.latlon, [d.estimate("mean") for d in dists])
    levels = np.array([d.level_of(truth[i : i + 1])[0] for i, d in enumerate(dists)])
    assert top1.coverage["coverage@0.9"] == pytest.approx((levels <= 0.9).mean())
    assert top1.coverage["coverage@0.5"] <= top1.coverage["coverage@0.9"]
    # the median is the better estimate in expectation under the model's own distribution
    for i, d in enumerate(dists):
        assert (
            d.expected_distance_km(median.latlon[i])
            <= d.expected_distance_km(top1.latlon[i]) + 1e-6
        )


def test_report_measures_the_distributions(tmp_path):
    from geoalign.evaluation.probabilistic import MOVES_KM, moved
    from geoalign.geo.distance import haversine_km

    model = tiny_geoclip()
    path = model.save(tmp_path / "m")
    rng = np.random.default_rng(5)
    gallery = pd.DataFrame(rng.uniform([-60, -180], [70, 180], (400, 2)), columns=["lat", "lon"])
    gallery.to_csv(tmp_path / "g.csv", index=False)
    feats = torch.from_numpy(rng.normal(size=(50, 12)).astype(np.float32))
    truth = gallery.to_numpy()[rng.choice(400, 50)]
    run = evaluate_checkpoint(
        path,
        Queries(feats, truth, np.arange(50), "rows"),
        benchmark="custom",
        out=tmp_path / "eval",
        gallery=str(tmp_path / "g.csv"),
        modes=["top1", "median"],
        baselines=False,
    )
    top1, median = run.evaluation.results
    s = top1.probabilistic
    geo = Geolocator(load_model(path), gallery=gallery, cache=False)
    dists = geo.distributions(geo.embed_features(feats))
    levels = np.array([d.level_of(truth[i : i + 1])[0] for i, d in enumerate(dists)])
    assert s["reliability"][0.9] == pytest.approx((levels <= 0.9).mean())
    assert s["verify_false_alarm@0.05"] == pytest.approx((levels > 0.95).mean())
    assert set(s["verify_power@0.05"]) == set(MOVES_KM)
    assert [x["answered"] for x in s["risk_coverage"]][-1] == 1.0
    assert s["risk_coverage"][-1]["median_km"] == pytest.approx(np.median(median.dist_km))
    text = run.paths["markdown"].read_text()
    assert "## Distributions" in text and run.paths["reliability"].is_file()
    pts = moved(truth, 750.0, np.random.default_rng(0))
    assert np.allclose(
        haversine_km(truth[:, 0], truth[:, 1], pts[:, 0], pts[:, 1]), 750.0, rtol=1e-6
    )


def test_table5_prior_radius_rows(tmp_path):
    from geoalign.geo.distance import haversine_km

    path = tiny_geoclip().save(tmp_path / "m")
    rng = np.random.default_rng(7)
    gallery = pd.DataFrame(rng.uniform([-60, -180], [70, 180], (600, 2)), columns=["lat", "lon"])
    gallery.to_csv(tmp_path / "g.csv", index=False)
    feats = torch.from_numpy(rng.normal(size=(30, 12)).astype(np.float32))
    truth = gallery.to_numpy()[rng.choice(600, 30)]
    run = evaluate_checkpoint(
        path,
        Queries(feats, truth, np.arange(30), "rows"),
        benchmark="im2gps3k",
        out=tmp_path / "eval",
        gallery=str(tmp_path / "g.csv"),
        modes=["top1"],
        baselines=False,
        probabilistic=False,
        prior_radii_km=(2500, 750),
    )
    plain, r2500, r750 = run.evaluation.results
    assert "prior 2500 km" in r2500.name and "prior 750 km" in r750.name
    for row, radius in ((r2500, 2500), (r750, 750)):
        d = haversine_km(truth[:, 0], truth[:, 1], row.latlon[:, 0], row.latlon[:, 1])
        assert (d <= radius + 1e-6).all()  # the truth is a gallery point: never empty
        assert row.metrics[f"acc@{radius}km"] == 100.0
    text = run.paths["markdown"].read_text()
    assert "gallery within 750 km (country) — published | 15.8 | 41.2" in text
    with pytest.raises(Exception, match="prior radius must be positive"):
        evaluate_model(load_model(path), feats, truth, gallery.to_numpy(), prior_radius_km=0)


def test_top_k_is_distinct_and_merges_probability():
    from geoalign.geo.distance import pairwise_haversine_km

    rng = np.random.default_rng(3)
    base = rng.uniform([-50, -170], [60, 170], (100, 2))
    gallery = np.concatenate([base, base + 0.001])  # every point twice, ~100 m apart
    geo = Geolocator(tiny_geoclip(), gallery=gallery, cache=False)
    q = geo.embed_features(torch.randn(6, 12))
    raw = geo.rank(q, top_k=10, min_separation_km=0)
    distinct = geo.rank(q, top_k=5)
    for r, d in zip(raw, distinct, strict=True):
        pts = np.array([[c.lat, c.lon] for c in d])
        far = pairwise_haversine_km(pts, pts)[np.triu_indices(len(pts), 1)]
        assert (far >= 5.0).all() and d[0].gallery_index in {r[0].gallery_index, r[1].gallery_index}
        # each kept candidate holds its twin's probability too
        assert d[0].prob == pytest.approx(r[0].prob + r[1].prob, rel=1e-5)
