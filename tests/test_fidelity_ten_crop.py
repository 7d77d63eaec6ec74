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
