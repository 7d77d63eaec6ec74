"""The probe learns what is learnable and nothing from noise; sklearn conventions hold."""

import numpy as np
import pytest
from sklearn.base import clone

from geoalign.downstream.probes import LocationProbe, draw_configs, random_search
from geoalign.errors import GeoalignError

FAST = dict(max_epochs=30, patience=6, batch_size=128)


def _data(n, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.1, 50.0, size=d)  # unequal feature scales


def _smooth(X):
    z = (X - X.mean(0)) / X.std(0)
    return np.sin(2 * z[:, 0]) + z[:, 1] ** 2 - z[:, 2] * z[:, 3]


def test_mlp_learns_a_known_function():
    X = _data(2000)
    y = _smooth(X) * 10 + 100
    probe = LocationProbe("regression", hidden_dim=64, n_layers=2, lr=5e-3, **FAST).fit(
        X[:1400], y[:1400], X[1400:1700], y[1400:1700]
    )
    assert probe.score(X[1700:], y[1700:]) > 0.9
    pred = probe.predict(X[1700:])
    assert abs(pred.mean() - y[1700:].mean()) < 1.0  # targets are de-standardised
    assert 50 < pred.mean() < 150


def test_probe_fails_on_noise():
    X = _data(3000, seed=1)
    y = np.random.default_rng(2).normal(size=3000)
    probe = LocationProbe("regression", hidden_dim=128, n_layers=2, **FAST).fit(
        X[:2000], y[:2000], X[2000:2500], y[2000:2500]
    )
    assert abs(probe.score(X[2500:], y[2500:])) < 0.05


def test_linear_probe_is_linear():
    X = _data(2000, seed=3)
    y = X @ np.arange(1.0, 7.0) + 3.0
    lin = LocationProbe("regression", n_layers=0, lr=1e-2, **FAST).fit(X[:1500], y[:1500])
    assert lin.score(X[1500:], y[1500:]) > 0.99
    nonlinear = _smooth(X)
    lin2 = LocationProbe("regression", n_layers=0, lr=1e-2, **FAST).fit(X[:1500], nonlinear[:1500])
    assert lin2.score(X[1500:], nonlinear[1500:]) < 0.3  # a linear probe cannot fit sin/x²/x·y


def test_classifier_and_unseen_classes():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 4)) * 6
    y = rng.integers(0, 5, 2000)
    X = centres[y] + rng.normal(size=(2000, 4))
    labels = np.array(["a", "b", "c", "d", "e"])[y]
    probe = LocationProbe("classification", hidden_dim=64, n_layers=1, **FAST)
    probe.fit(X[:1500], labels[:1500])
    assert probe.score(X[1500:], labels[1500:]) > 0.95
    proba = probe.predict_proba(X[1500:1510])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    # A class never seen in training can never be predicted: it counts as wrong, not as an error.
    unseen = np.array(["z"] * 10)
    assert probe.score(X[1500:1510], unseen) == 0.0
    # ... and validation rows with unseen labels are ignored for early stopping.
    probe.fit(
        X[:1000], labels[:1000], X[1000:1100], np.where(y[1000:1100] == 0, "z", labels[1000:1100])
    )


def test_sklearn_conventions_and_errors():
    probe = LocationProbe("regression", hidden_dim=32, n_layers=1, max_epochs=2)
    cloned = clone(probe)
    assert cloned.get_params() == probe.get_params()
    with pytest.raises(GeoalignError, match="not fitted"):
        probe.predict(np.zeros((2, 3)))
    with pytest.raises(GeoalignError, match="regression' or 'classification"):
        LocationProbe("ranking").fit(np.zeros((20, 2)), np.zeros(20))
    probe.fit(np.random.default_rng(0).normal(size=(50, 3)), np.arange(50.0))
    with pytest.raises(GeoalignError, match="shape"):
        probe.predict(np.zeros((2, 4)))


def test_seeded_fit_is_deterministic():
    X = _data(600, seed=7)
    y = _smooth(X)
    a = LocationProbe("regression", hidden_dim=32, n_layers=1, seed=3, max_epochs=5).fit(X, y)
    b = LocationProbe("regression", hidden_dim=32, n_layers=1, seed=3, max_epochs=5).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_bfloat16_probe_learns():
    X = _data(1500, seed=8)
    y = _smooth(X)
    probe = LocationProbe(
        "regression", hidden_dim=64, n_layers=2, lr=5e-3, dtype="bfloat16", **FAST
    ).fit(X[:1200], y[:1200])
    assert probe.score(X[1200:], y[1200:]) > 0.8


def test_random_search_same_draws_and_picks_best_val():
    assert draw_configs(4, seed=0, linear=False) == draw_configs(4, seed=0, linear=False)
    lin = draw_configs(3, seed=0, linear=True)
    assert all(c["n_layers"] == 0 for c in lin)
    X = _data(1200, seed=9)
    y = _smooth(X)
    configs = [
        {"hidden_dim": 64, "n_layers": 1, "dropout": 0.0, "lr": 3e-3, "weight_decay": 1e-4},
        {"hidden_dim": 8, "n_layers": 0, "dropout": 0.0, "lr": 1e-2, "weight_decay": 1e-4},
    ]
    res = random_search(
        "regression", X[:800], y[:800], X[800:], y[800:], configs, fixed=dict(max_epochs=20)
    )
    assert res.best_params == configs[0]  # the MLP beats the linear model on a non-linear target
    assert res.best_val_score == max(t["val_score"] for t in res.trials)
