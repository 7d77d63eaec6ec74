"""GeoSURGE in the quickstart: the in-code settings match configs/geosurge/scene_labels.yaml, and
the rows it trains on real scene-label descriptors beat random guessing."""

from pathlib import Path

import numpy as np

from geoalign.training.geosurge import (
    QUICKSTART_NAME,
    geosurge_quickstart_rows,
    load_geosurge_config,
    quickstart_geosurge_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "geosurge"


def test_quickstart_settings_are_the_scene_labels_config(tmp_path):
    ours = quickstart_geosurge_config(tmp_path / "run", seed=3).to_dict()
    yaml_cfg = load_geosurge_config(CONFIGS / "scene_labels.yaml").to_dict()
    for section in ("model", "cells", "optim"):
        assert ours[section] == yaml_cfg[section], section
    assert ours["data"]["val_fraction"] == yaml_cfg["data"]["val_fraction"]
    assert ours["trainer"]["seed"] == 3 and ours["trainer"]["out_dir"] == str(tmp_path / "run")
    assert ours["trainer"]["resume"] is None  # a quickstart never resumes an old run


def test_quickstart_rows_on_real_scene_labels_beat_random_guesses(tmp_path):
    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.geo.distance import haversine_km
    from geoalign.geo.metrics import geoscore

    rng = np.random.default_rng(0)
    tx, ty, _ = load_scene_label_set("yfcc26k")
    vx, vy, _ = load_scene_label_set("im2gps3k")
    train = rng.choice(len(tx), 10000, replace=False)
    test = rng.choice(len(vx), 1000, replace=False)
    rows, summary = geosurge_quickstart_rows(
        tx[train], ty[train], vx[test], vy[test], tmp_path / "run", modes=("top1", "mode")
    )
    assert [r.mode for r in rows] == ["top1", "mode"]
    assert all(r.name.startswith(QUICKSTART_NAME) and r.kind == "model" for r in rows)
    assert (tmp_path / "run" / "best" / "config.json").is_file()
    assert summary["training_rows"] < 10000 and summary["global_step"] > 0
    # random guesses: a training coordinate drawn at random for every query (many draws)
    draws = ty[train][rng.integers(0, len(train), (50, len(test)))]
    rand = haversine_km(draws[..., 0], draws[..., 1], vy[test, 0], vy[test, 1])
    rand_2500 = 100.0 * (rand <= 2500).mean()
    rand_score = float(geoscore(rand).mean())
    for r in rows:
        assert np.isfinite(r.dist_km).all() and ((r.prob > 0) & (r.prob <= 1 + 1e-6)).all()
        print(r.name, r.metrics, "random:", rand_2500, rand_score, np.median(rand))
        assert r.metrics["acc@2500km"] > rand_2500 + 2
        assert r.metrics["geoscore"] > rand_score + 100
        assert r.metrics["median_km"] < np.median(rand)
