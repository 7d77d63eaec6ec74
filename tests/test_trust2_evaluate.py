"""`geoalign evaluate`: a manifest's relative paths read from --images, its skipped rows listed in
the report folder, bad galleries/devices/options as usage errors, results on stdout, --json -."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.scene_labels import SCENE_DIM, SCENE_LABELS
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig

runner = CliRunner()


def _tiny_model(path, in_dim: int, features: str | None):
    torch.manual_seed(0)
    GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
            ),
            image_head=ImageHeadConfig(in_dim=in_dim, hidden_dim=16, out_dim=8),
            queue_size=0,
            features=features,
        )
    ).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=24,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("scene") / "model", SCENE_DIM, SCENE_LABELS)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gallery") / "g.csv"
    pd.DataFrame({"lat": rng.uniform(-60, 60, 50), "lon": rng.uniform(-170, 170, 50)}).to_csv(
        path, index=False
    )
    return path


def _scene_args(model, out, *extra):
    return [
        "evaluate",
        "--model",
        str(model),
        "--benchmark",
        "im2gps",
        "--no-baselines",
        "--out",
        str(out),
        *extra,
    ]


def test_manifest_paths_are_read_from_images_and_skipped_rows_go_to_out(
    tiny_clip, gallery, tmp_path
):
    model = _tiny_model(tmp_path / "model", 24, f"hf:{tiny_clip}")
    photos, lists, out = tmp_path / "photos", tmp_path / "lists", tmp_path / "report"
    photos.mkdir()
    lists.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            photos / f"p{i}.jpg"
        )
    manifest = lists / "test.csv"
    manifest.write_text(
        "image,lat,lon\np0.jpg,10,20\np1.jpg,-5,100\np2.jpg,40,-3\nmissing.jpg,1,1\n"
    )
    args = ["evaluate", "--model", str(model), "--manifest", str(manifest), "--images"]
    res = runner.invoke(
        app, [*args, str(photos), "--gallery", str(gallery), "--no-baselines", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_queries"] == 3  # the three photos under --images, not under lists/
    skipped = out / "test.csv.skipped.csv"
    assert skipped.is_file() and "missing.jpg" in skipped.read_text()
    assert sorted(p.name for p in lists.iterdir()) == ["test.csv"]  # nothing beside the input
    assert "model (top-1)" in res.stdout and "model (top-1)" not in res.stderr
    assert "report:" in res.stderr and "report:" not in res.stdout


def test_the_table_is_on_stdout_and_json_dash_prints_the_report(scene_model, gallery, tmp_path):
    res = runner.invoke(app, _scene_args(scene_model, tmp_path / "a", "--gallery", str(gallery)))
    assert res.exit_code == 0, res.output
    assert "model (top-1)" in res.stdout and "model (top-1)" not in res.stderr
    res = runner.invoke(
        app, _scene_args(scene_model, tmp_path / "b", "--gallery", str(gallery), "--json", "-")
    )
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed == json.loads((tmp_path / "b" / "report.json").read_text())
    assert printed["n_queries"] == 237 and not (tmp_path / "-").exists()
    res = runner.invoke(
        app,
        _scene_args(
            scene_model,
            tmp_path / "c",
            "--gallery",
            str(gallery),
            "--json",
            str(tmp_path / "r.json"),
        ),
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["n_queries"] == 237


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--gallery", "train:0", "--train", "scene-labels:im2gps"], "train:N with N >= 1"),
        (["--gallery", "train:abc", "--train", "scene-labels:im2gps"], "train:N with N >= 1"),
        (["--gallery", "train:100"], "give them with --train"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--mode", "centroid"], "--mode centroid: expected one of top1, mode, mean, median"),
        (["--radius-km", "0"], "--radius-km 0"),
        (["--radius-km", "nan"], "--radius-km nan"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--train-sample", "-1"], "--train-sample -1"),
        (["--retrieval-k", "-1"], "--retrieval-k -1"),
        (["--retrieval-k", "4"], "--retrieval-k adds the training photos' locations"),
    ],
)
def test_bad_options_are_usage_errors_before_any_work(scene_model, tmp_path, extra, needle):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    res = runner.invoke(app, _scene_args(scene_model, tmp_path / "o", *extra))
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_an_empty_gallery_file_is_a_usage_error(scene_model, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("lat,lon\n")
    res = runner.invoke(app, _scene_args(scene_model, tmp_path / "o", "--gallery", str(empty)))
    assert res.exit_code == 2 and "holds no coordinates" in res.stderr, res.output
    res = runner.invoke(app, _scene_args(scene_model, tmp_path / "o", "--gallery", str(tmp_path)))
    assert res.exit_code == 2 and "is a folder" in res.stderr, res.output


def test_retrieval_k_adds_the_augmented_rows_beside_the_plain_ones(scene_model, gallery, tmp_path):
    args = ["--gallery", str(gallery), "--train", "scene-labels:im2gps", "--train-sample", "40"]
    res = runner.invoke(
        app, _scene_args(scene_model, tmp_path / "o", *args, "--retrieval-k", "4", "--json", "-")
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    names = [r["method"] for r in report["results"]]
    assert "model (top-1)" in names and "model + 4 training neighbours (top-1)" in names
    assert report["meta"]["retrieval_k"] == 4
