"""Baselines: brute-force references on synthetic data, and real numbers on the scene labels."""

import numpy as np
import pytest

from geoalign.baselines import KNN, DensestLocation, GeocellClassifier, default_taus
from geoalign.geo.distance import haversine_km, pairwise_haversine_km

CITIES = np.array(
    [[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.21], [-22.9, -43.2]]
)


def regional_data(n_per=200, seed=0, noise=0.3):
    """Features that say which of five cities a point is near (one-hot + noise)."""
    rng = np.random.default_rng(seed)
    region = np.repeat(np.arange(5), n_per)
    coords = CITIES[region] + rng.normal(scale=1.0, size=(len(region), 2))
    feats = np.eye(5)[region] + rng.normal(scale=noise, size=(len(region), 5))
    return feats.astype(np.float32), coords, region


def test_one_nn_is_brute_force_cosine():
    rng = np.random.default_rng(1)
    train_x, train_y = rng.normal(size=(300, 8)), rng.uniform(-60, 60, size=(300, 2))
    q = rng.normal(size=(20, 8))
    pred = KNN(k=1).fit(train_x, train_y).predict(q)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    best = (unit(q) @ unit(train_x).T).argmax(1)
    assert np.allclose(pred, train_y[best])


def test_knn_density_vote_follows_the_majority_region():
    # 3 of the 5 neighbours are around Paris, 2 far apart: the vote lands in Paris.
    train_y = np.array([[48.8, 2.3], [48.9, 2.4], [48.7, 2.2], [-33.9, 151.2], [35.7, 139.7]])
    train_x = np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [1.0, 0.0], [1.0, 0.05]])
    knn = KNN(k=5, sigma_km=100.0).fit(train_x, train_y)
    pred = knn.predict(np.array([[1.0, 0.0]]))
    assert haversine_km(48.8, 2.3, pred[0, 0], pred[0, 1]) < 20
    assert KNN(k=1).fit(train_x, train_y).predict(np.array([[1.0, 0.0]]))[0, 0] == pytest.approx(
        -33.9
    )


def test_densest_location_is_the_biggest_cluster():
    rng = np.random.default_rng(2)
    coords = np.vstack(
        [
            CITIES[0] + rng.normal(scale=2, size=(500, 2)),
            CITIES[1] + rng.normal(scale=2, size=(200, 2)),
        ]
    )
    prior = DensestLocation(radius_km=500).fit(None, coords)
    assert haversine_km(*CITIES[0], *prior.location) < 300
    pred = prior.predict(np.zeros((7, 3)))
    assert pred.shape == (7, 2) and np.allclose(pred, prior.location)
    # its count is the maximum over the candidates (brute force)
    counts = (pairwise_haversine_km(coords, coords) <= 500).sum(1)
    chosen = (pairwise_haversine_km(prior.location[None], coords) <= 500).sum()
    assert chosen == counts.max()


def test_geocell_classifier_learns_regions():
    train_x, train_y, _ = regional_data(seed=3, noise=0.2)
    test_x, test_y, _ = regional_data(n_per=40, seed=4, noise=0.2)
    clf = GeocellClassifier(epochs=4, lr=2e-2, batch_size=128, tau_max=(150, 40), tau_min=5)
    clf.fit(train_x, train_y)
    pred = clf.predict(test_x)
    d = haversine_km(test_y[:, 0], test_y[:, 1], pred[:, 0], pred[:, 1])
    assert np.mean(d < 500) > 0.9  # features are noisy: a few points are ambiguous
    assert clf.log_probs(test_x).shape[1] == len(clf.hierarchy.partitions[-1])


def test_default_taus_scale_with_data():
    taus, tau_min = default_taus(25_600)
    assert taus == (400, 100, 25) and tau_min == 3
    assert default_taus(4_720_000)[0][0] > 50_000


@pytest.mark.slow
def test_scene_label_baselines_match_the_known_numbers():
    """On the real scene labels (train YFCC26k, test Im2GPS3k): 1-NN ~8/25 %, prior ~15/36 %."""
    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.geo.metrics import summarize_errors

    x, y, _ = load_scene_label_set("yfcc26k")
    qx, qy, _ = load_scene_label_set("im2gps3k")
    for baseline, lo750, lo2500 in ((KNN(k=1), 7, 23), (DensestLocation(), 14, 34)):
        p = baseline.fit(x, y).predict(qx)
        m = summarize_errors(haversine_km(qy[:, 0], qy[:, 1], p[:, 0], p[:, 1]))
        assert lo750 < m["acc@750km"] < lo750 + 3 and lo2500 < m["acc@2500km"] < lo2500 + 4
