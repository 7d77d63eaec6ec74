"""`geoalign train` calibrates the exported model on the config's validation split (the rows
data.fraction holds out), stores it with what it was fitted on, and says so on stderr; loading
the checkpoint for prediction applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from geoalign.cli.app import app
from geoalign.inference.calibration import Calibration
from geoalign.inference.locator import Geolocator


def _config(tmp_path, fraction: float):
    cfg = {
        "name": "tiny-calibrated",
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
        "data": {"source": "scene-labels", "path": "im2gps", "fraction": fraction},
        "optim": {"batch_size": 32, "epochs": 1, "max_steps": 3},
        "trainer": {"progress": False, "seed": 5},
        "eval": {"benchmark": "im2gps", "gallery": "train:200", "modes": ["top1"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_with_a_validation_split_stores_a_calibration_that_predict_applies(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(_config(tmp_path, 0.7)), "--out", str(out), "--no-eval"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "model" / "config.json").read_text())
    cal = Calibration.from_dict(config["calibration"])
    assert "data.fraction=0.7 holds out of scene labels of im2gps" in cal.fitted_on
    assert "gallery train:200" in cal.fitted_on
    assert cal.n >= 20
    assert "calibration stored in" in result.stderr and "calibration stored" not in result.stdout

    geo = Geolocator.from_pretrained(str(out / "model"), backbone=None, gallery="geoclip-100k")
    assert geo.calibration is not None and geo.calibration.to_dict() == cal.to_dict()
    feats = torch.randn(2, 387).abs()
    (dist, _) = geo.distributions(geo.embed_features(feats))
    assert dist.grid.level == cal.level
    assert dist.mass_for(0.9) == pytest.approx(cal(0.9))
    raw = geo.probs(geo.embed_features(feats), scale=1.0)
    scaled = geo.probs(geo.embed_features(feats))
    if cal.scale != 1.0:  # the logit factor applies to every probability
        assert not np.allclose(raw.numpy(), scaled.numpy())


def test_train_without_a_validation_split_says_there_is_none(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(_config(tmp_path, 1.0)), "--out", str(out), "--no-eval"]
    )
    assert result.exit_code == 0, result.output
    assert "calibration" not in json.loads((out / "model" / "config.json").read_text())
    assert "no calibration: the config has no validation split" in result.stderr
