"""Evaluation harness: retrieval against brute force, mode seeking, ten-crop, reports."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.evaluation.harness import (
    Evaluation,
    MethodResult,
    evaluate_baselines,
    evaluate_model,
    make_gallery,
)
from geoalign.geo.distance import haversine_km, pairwise_haversine_km
from geoalign.inference.modes import ModeSeeker
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def tiny_model(seed=0) -> GeoCLIP:
    torch.manual_seed(seed)
    return GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
            ),
            image_head=ImageHeadConfig(in_dim=8, hidden_dim=16, out_dim=16),
            queue_size=0,
        )
    )


def _random_gallery(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-70, 70, n), rng.uniform(-180, 180, n)], axis=1)


def brute_mass(gallery, probs, radius):
    near = pairwise_haversine_km(gallery, gallery) <= radius
    return probs @ near.T.astype(np.float64)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000), st.sampled_from([100.0, 750.0, 2500.0]))
def test_mode_seeker_is_exact_on_small_galleries(n, seed, radius):
    gallery = _random_gallery(n, seed)
    probs = np.random.default_rng(seed + 1).dirichlet(np.ones(n) * 0.3, size=4)
    idx, mass = ModeSeeker(gallery, radius).select(torch.from_numpy(probs))
    expected = brute_mass(gallery, probs, radius)
    assert np.allclose(mass.numpy(), expected.max(axis=1), atol=1e-5)
    assert np.allclose(expected[np.arange(4), idx.numpy()], expected.max(axis=1), atol=1e-5)


def test_mode_seeking_prefers_a_spread_out_region_to_a_lone_peak():
    # A lone entry with p = 0.2 far away vs 20 entries near Paris with p = 0.04 each.
    paris = np.array([[48.85 + 0.1 * i, 2.35 + 0.1 * i] for i in range(20)])
    gallery = np.vstack([[[-33.9, 151.2]], paris])
    probs = torch.tensor([[0.2] + [0.04] * 20], dtype=torch.float64)
    idx, mass = ModeSeeker(gallery, 500.0).select(probs)
    assert 1 <= int(idx) <= 20 and float(mass) == pytest.approx(0.8)
    assert int(probs.argmax()) == 0  # top-1 picks the lone peak


def test_binned_mode_seeker_returns_the_best_member_of_the_winning_bin():
    gallery = _random_gallery(3000, 4)
    rng = np.random.default_rng(5)
    probs = torch.from_numpy(rng.dirichlet(np.ones(3000) * 0.05, size=3))
    seeker = ModeSeeker(gallery, 750.0, max_bins=1000)
    assert seeker.s2_level == 6 and seeker.n_bins < 3000  # ~150 km cells for a 750 km radius
    idx, mass = seeker.select(probs)
    bins = seeker.bin_of.numpy()
    # brute force over bins: mass of a bin = probability of all bins whose representatives
    # (the member nearest the bin's centre) lie within the radius of its representative
    per_bin = np.zeros((3, seeker.n_bins))
    np.add.at(per_bin.T, bins, probs.numpy().T)
    reps = np.array([np.flatnonzero(bins == b)[0] for b in range(seeker.n_bins)])
    for row, i in enumerate(idx.numpy()):
        members = np.flatnonzero(bins == bins[i])
        assert probs[row, i] == probs[row, members].max()
        assert per_bin[row, bins[i]] > 0 and float(mass[row]) >= per_bin[row, bins[i]] - 1e-9
    assert len(reps) == seeker.n_bins
    # the answer lies in a region nearly as heavy as the exact best region of the gallery
    exact = brute_mass(gallery, probs.numpy(), 750.0)
    got = exact[np.arange(3), idx.numpy()]
    assert np.all(got >= 0.8 * exact.max(axis=1))


def test_top1_matches_brute_force_and_ten_crop_averages_logits():
    model = tiny_model()
    gallery = _random_gallery(500, 1)
    feats = torch.randn(40, 8)
    truth = _random_gallery(40, 2)
    (top1,) = evaluate_model(model, feats, truth, gallery, modes=["top1"])
    with torch.no_grad():
        logits = model(feats, torch.tensor(gallery, dtype=torch.float32))
    best = logits.argmax(dim=1).numpy()
    assert np.allclose(top1.latlon, gallery[best])
    assert np.allclose(top1.prob, logits.softmax(dim=1).max(dim=1).values.numpy(), atol=1e-5)
    d = haversine_km(truth[:, 0], truth[:, 1], gallery[best, 0], gallery[best, 1])
    assert np.allclose(top1.dist_km, d)
    assert top1.metrics["acc@2500km"] == pytest.approx(100 * np.mean(d <= 2500))

    crops = torch.randn(40, 10, 8)
    (tc,) = evaluate_model(model, crops, truth, gallery, modes=["top1"])
    with torch.no_grad():
        per_crop = torch.stack(
            [model(crops[:, c], torch.tensor(gallery, dtype=torch.float32)) for c in range(10)]
        )
    assert np.allclose(tc.latlon, gallery[per_crop.mean(0).argmax(1).numpy()])


def test_mode_result_uses_full_gallery_probabilities():
    model = tiny_model(3)
    gallery = _random_gallery(300, 7)
    feats, truth = torch.randn(10, 8), _random_gallery(10, 8)
    (mode,) = evaluate_model(model, feats, truth, gallery, modes=["mode"], radius_km=1000)
    with torch.no_grad():
        probs = model(feats, torch.tensor(gallery, dtype=torch.float32)).softmax(1).double().numpy()
    expected = brute_mass(gallery, probs, 1000.0)
    got = expected[
        np.arange(10), [int(np.flatnonzero((gallery == p).all(1))[0]) for p in mode.latlon]
    ]
    assert np.allclose(got, expected.max(1), atol=1e-5)
    assert np.allclose(mode.prob, expected.max(1), atol=1e-5)


def test_make_gallery_samples_training_coordinates():
    coords = _random_gallery(1000, 9)
    g, desc = make_gallery("train:100", coords, seed=1)
    assert len(g) == 100 and "100 training coordinates" in desc
    assert {tuple(r) for r in g} <= {tuple(r) for r in coords}
    assert np.array_equal(g, make_gallery("train:100", coords, seed=1)[0])
    from geoalign.errors import DataError

    with pytest.raises(DataError, match="train:N"):
        make_gallery("train:many", coords)


def test_report_files_and_published_numbers(tmp_path):
    from geoalign.baselines import KNN, DensestLocation
    from geoalign.evaluation.report import write_report

    model = tiny_model()
    gallery = _random_gallery(200, 10)
    train_x, train_y = torch.randn(300, 8), _random_gallery(300, 11)
    feats, truth = torch.randn(25, 8), _random_gallery(25, 12)
    ev = Evaluation(
        "im2gps3k", np.array([f"img{i}.jpg" for i in range(25)]), truth, "test gallery", 200
    )
    ev.results += evaluate_model(model, feats, truth, gallery, name="tiny")
    ev.results += evaluate_baselines([KNN(k=1), DensestLocation()], train_x, train_y, feats, truth)
    paths = write_report(ev, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "**tiny (top-1)**" in md and "1-NN" in md and "GeoCLIP — published | 14.1 | 34.5" in md
    data = json.loads(paths["json"].read_text())
    assert data["n_queries"] == 25 and len(data["results"]) == 4
    assert any(p["method"].startswith("GeoSURGE") for p in data["published"])
    pred = __import__("pandas").read_csv(paths["predictions"])
    assert len(pred) == 25 and "tiny (top-1) | km" in pred.columns
    assert np.allclose(pred["1-NN | km"], ev.result("1-NN").dist_km, atol=1e-3)
    for key in ("histogram", "map"):
        assert paths[key].stat().st_size > 10_000
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_method_result_metrics():
    truth = np.array([[0.0, 0.0], [0.0, 0.0]])
    pred = np.array([[0.0, 0.0], [0.0, 10.0]])
    r = MethodResult.from_predictions("x", "baseline", pred, truth)
    assert r.metrics["acc@1km"] == 50.0 and r.metrics["acc@2500km"] == 100.0
