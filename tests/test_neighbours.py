"""Retrieval-augmented candidates: each query's k nearest training photos (in the model's query
space) join its candidates, scored like gallery rows; everything downstream works on the union."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.test_architecture import tiny_geoclip, tiny_geosurge

from geoalign.errors import CoordinateError, DataError, GeoalignError
from geoalign.evaluation.harness import evaluate_model
from geoalign.geo.distance import haversine_km
from geoalign.inference.distribution import unit
from geoalign.inference.locator import Geolocator
from geoalign.models.base import Candidates
from geoalign.models.base import logits as model_logits


def _world(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-50, 60, n), rng.uniform(-170, 170, n)], 1)


def test_probabilities_are_the_softmax_over_the_gallery_and_the_query_s_own_neighbours():
    model = tiny_geoclip()
    gallery, train_latlon = _world(40, 0), _world(30, 1)
    train_feats, feats = torch.randn(30, 12), torch.randn(5, 12)
    plain = Geolocator(model, gallery=gallery, cache=False)
    geo = plain.with_training_neighbours(train_feats, train_latlon, k=4)
    q = geo.embed_features(feats)

    # brute force: cosine neighbours in query space, then one softmax over gallery + those 4
    train_q = F.normalize(plain.embed_features(train_feats), dim=-1)
    near = torch.topk(F.normalize(q, dim=-1) @ train_q.T, 4, dim=-1).indices
    union = model.candidates(np.concatenate([gallery, train_latlon]))
    logits = model_logits(model, q, union)
    probs = geo.probs(q)
    assert probs.shape == (5, 70)
    for b in range(5):
        allowed = torch.cat([torch.arange(40), 40 + near[b]])
        want = torch.softmax(logits[b, allowed].float(), dim=-1)
        assert torch.allclose(probs[b, allowed], want, atol=1e-6)
        assert probs[b].sum() == pytest.approx(1.0, abs=1e-5)
        others = torch.ones(70, dtype=torch.bool)
        others[allowed] = False
        assert (probs[b, others] == 0).all()
        idx, p = geo.topk(q[b : b + 1], 3)
        assert list(idx[0]) == list(torch.topk(probs[b], 3).indices.numpy())
        assert p[0] == pytest.approx(torch.topk(probs[b], 3).values.numpy(), rel=1e-4)
    # the plain Geolocator is untouched
    assert len(plain.candidates) == 40 and plain.neighbours is None


class Observer:
    """A Locator that observes its photo's location with a little noise: queries are unit vectors,
    logits a von Mises-Fisher kernel (kappa ~ 500 km), so nearest neighbours in query space are
    the nearest training photos on the sphere."""

    method, ranks, reads, feature_dim, backbone_spec, training = (
        "test",
        "gallery",
        "features",
        2,
        None,
        False,
    )

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def encode_features(self, features):
        return torch.from_numpy(unit(features.double().numpy())).float()

    def encode_pixels(self, pixels, segmentation=None):
        raise TypeError("features only")

    def candidates(self, gallery=None, keys=None):
        return Candidates(gallery, "gallery", torch.from_numpy(unit(gallery)).float(), "pts")

    def temperature(self) -> float:
        return 160.0

    def similarities(self, queries, candidates):
        return queries @ candidates.keys.T


def test_neighbours_answer_at_training_locations_a_coarse_gallery_cannot_reach():
    rng = np.random.default_rng(2)
    grid = np.stack(np.meshgrid(np.arange(-60, 61, 10.0), np.arange(-180, 180, 10.0)), -1)
    gallery = grid.reshape(-1, 2)  # a 10-degree grid: answers up to ~550 km off
    landmarks = _world(200, 3)
    truth = landmarks[:60]
    queries = truth + rng.normal(0, 0.05, truth.shape)  # photos of the same landmarks
    plain = Geolocator(Observer(), gallery=gallery, cache=False)
    geo = plain.with_training_neighbours(landmarks, landmarks, k=4)
    rows = {
        name: evaluate_model(g, torch.from_numpy(queries), truth, modes=("top1", "median"))
        for name, g in (("plain", plain), ("augmented", geo))
    }
    plain_err = np.median(rows["plain"][0].dist_km)
    aug_err = np.median(rows["augmented"][0].dist_km)
    assert plain_err > 100 and aug_err < 25, (plain_err, aug_err)
    assert np.median(rows["augmented"][1].dist_km) < plain_err / 4  # the median estimate too
    ranked = geo.rank(geo.embed_features(torch.from_numpy(queries[:3])), top_k=2)
    for cands, true in zip(ranked, truth[:3], strict=True):
        assert cands[0].gallery_index >= len(gallery)  # a training row
        assert haversine_km(cands[0].lat, cands[0].lon, *true) < 25


def test_a_prior_still_restricts_the_neighbours():
    from geoalign.geo.priors import BBox

    geo = Geolocator(Observer(), gallery=_world(50, 4), cache=False).with_training_neighbours(
        _world(80, 5), _world(80, 5), k=8
    )
    prior = BBox(0, -20, 60, 40)
    mask = geo.prior_mask(prior)
    q = geo.embed_features(torch.from_numpy(_world(4, 6)))
    probs = geo.probs(q, mask)
    assert (probs[:, ~mask] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(4))


def test_bad_uses_are_clear_errors():
    geo = Geolocator(tiny_geoclip(), gallery=_world(10, 0), cache=False)
    with pytest.raises(DataError, match="k must be at least 1"):
        geo.with_training_neighbours(torch.randn(3, 12), _world(3, 1), k=0)
    with pytest.raises(DataError, match="3 training feature rows but 2 locations"):
        geo.with_training_neighbours(torch.randn(3, 12), _world(2, 1))
    with pytest.raises(CoordinateError, match="training locations: index 0: latitude"):
        geo.with_training_neighbours(torch.randn(1, 12), np.array([[95.0, 0.0]]))
    with pytest.raises(GeoalignError, match="already has training neighbours"):
        geo.with_training_neighbours(torch.randn(3, 12), _world(3, 1)).with_training_neighbours(
            torch.randn(3, 12), _world(3, 1)
        )
    cells = Geolocator(tiny_geosurge(), cache=False)
    with pytest.raises(GeoalignError, match="ranks its own geocells"):
        cells.with_training_neighbours(torch.randn(3, 12), _world(3, 1))
