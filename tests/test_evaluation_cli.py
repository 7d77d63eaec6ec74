"""`geoalign evaluate` end to end on the packaged scene labels (tiny model, small gallery)."""

import json

import torch
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.scene_labels import SCENE_DIM, SCENE_LABELS
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def _tiny_scene_model(path):
    torch.manual_seed(0)
    model = GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
            ),
            image_head=ImageHeadConfig(in_dim=SCENE_DIM, hidden_dim=16, out_dim=16),
            queue_size=0,
            features=SCENE_LABELS,
        )
    )
    return model.save(path)


def test_evaluate_scene_label_model_with_baselines(tmp_path):
    ckpt = _tiny_scene_model(tmp_path / "model")
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(ckpt),
            "--benchmark",
            "im2gps",
            "--train",
            "scene-labels:im2gps",
            "--gallery",
            "train:200",
            "--radius-km",
            "1000",
            "--prior-radius-km",
            "2500",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = [r["method"] for r in report["results"]]
    assert names[:3] == ["model (top-1)", "model (mode, 1000 km)", "model (median)"]
    assert "model, prior 2500 km (top-1)" in names  # GeoCLIP Table 5's protocol
    assert "probabilistic" in report["results"][0]  # coverage, verify rates, risk-coverage
    assert "1-NN" in names and any(n.startswith("prior") for n in names)
    assert report["n_queries"] == 237 and report["gallery_size"] == 200
    assert any(p["method"].startswith("GeoSURGE") for p in report["published"])  # Im2GPS, Table I
    assert "1-NN" in result.output


def test_evaluate_without_queries_says_what_to_give(tmp_path):
    ckpt = _tiny_scene_model(tmp_path / "model")
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(ckpt), "--out", str(tmp_path / "e")]
    )
    assert result.exit_code != 0
    assert "--queries" in result.output


def test_prior_radii_comma_separated_or_repeated(tmp_path):
    """--prior-radius-km 2500,750 --prior-radius-km 200: Table 5's rows for each radius."""
    ckpt = _tiny_scene_model(tmp_path / "model")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(ckpt), "--benchmark", "im2gps", "--gallery", "train:50"]
    args += ["--train", "scene-labels:im2gps", "--no-baselines", "--mode", "top1"]
    result = CliRunner().invoke(
        app, [*args, "--prior-radius-km", "2500,750", "--prior-radius-km", "200", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = [r["method"] for r in report["results"]]
    for km in (2500, 750, 200):
        assert f"model, prior {km} km (top-1)" in names
    assert report["meta"]["prior_radius_km"] == [2500.0, 750.0, 200.0]
    for bad in ("2500,,25", "750,-1", "city"):
        result = CliRunner().invoke(app, [*args, "--prior-radius-km", bad])
        assert result.exit_code == 2 and "--prior-radius-km" in result.output, result.output
