"""`eval.ten_crop` is honoured by `geoalign train`'s after-training evaluation, never ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from geoalign.cli import app


def tiny_config(tmp_path: Path, **eval_section) -> Path:
    cfg = {
        "name": "tiny-ten-crop",
        "reproduces": "none (test)",
        "model": {
            "init": "scratch",
            "queue_size": 32,
            "features": "places365-scene-labels",
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 8, "out_dim": 8},
        },  # fmt: skip
        "data": {"source": "scene-labels", "path": "im2gps"},
        "optim": {"batch_size": 32, "epochs": 1, "max_steps": 2},
        "trainer": {"progress": False, "out_dir": str(tmp_path / "run")},
        "eval": {"benchmark": "im2gps", "gallery": "train:200", "modes": ["top1"], **eval_section},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ten_crop_on_single_crop_features_is_refused_before_training(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_config(tmp_path, ten_crop=True))])
    assert result.exit_code == 2, result.output
    assert "ten-crop needs photo queries" in result.output
    assert "scene-labels:im2gps" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_ten_crop_evaluates_over_the_crops_the_queries_hold(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    feats = rng.normal(size=(n, 10, 387)).astype("f4")
    coords = np.stack([rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)], 1)
    store = tmp_path / "crops.npz"
    np.savez(store, features=feats, coords=coords, ids=np.array([f"q{i}" for i in range(n)]))
    path = tiny_config(tmp_path, ten_crop=True, queries=str(store), baselines=False)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "- ten-crop: True" in report


def test_ten_crop_with_nothing_to_evaluate_is_an_error_naming_the_key(tmp_path):
    path = tiny_config(tmp_path, ten_crop=True, benchmark=None)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    assert "eval.ten_crop" in result.output and "eval.images" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_benchmark_photos_stop_train_before_it_starts(tmp_path):
    import shutil
    from importlib import resources

    folder = tmp_path / "im2gps"
    path = tiny_config(tmp_path, ten_crop=True, images=str(folder))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and f"eval.images {folder}: not found" in result.output
    folder.mkdir()  # the labels but no photos: says how many are missing
    labels = resources.files("geoalign") / "assets" / "reference" / "im2gps_places365.csv"
    with resources.as_file(labels) as src:
        shutil.copy(src, folder / "im2gps_places365.csv")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    assert "237 of 237 Im2GPS photos missing" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_published_photo_configs_evaluate_their_benchmark_photos(tmp_path, monkeypatch):
    from geoalign.training.config import load_config, packaged_configs
    from geoalign.training.geosurge import load_geosurge_config

    root = packaged_configs()
    configs = [load_config(root / "geoclip" / "mp16.yaml")]
    configs += [load_geosurge_config(p) for p in sorted((root / "geosurge").glob("*.yaml"))]
    for cfg in configs:
        e = cfg.eval
        if e.ten_crop:  # every ten-crop config has photos to evaluate, its benchmark's
            assert e.images == f"data/{e.benchmark}", cfg.name
    monkeypatch.chdir(tmp_path)  # no data here: train says which photos are missing
    for config in ("configs/geoclip/mp16.yaml", "configs/geosurge/table7_depth1.yaml"):
        result = CliRunner().invoke(app, ["train", config])
        assert result.exit_code == 2, result.output
        bench = "im2gps3k" if "geoclip" in config else "im2gps"
        assert f"eval.images data/{bench}: not found" in result.output
