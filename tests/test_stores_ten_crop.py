"""`features extract --ten-crop`: the photo evaluation's ten crops stored per image; evaluating
from the store equals evaluating the photos with ten-crop (logits averaged over the crops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.feature_rows import load_feature_rows
from geoalign.data.feature_store import FeatureStore
from geoalign.data.manifest import load_manifest
from geoalign.evaluation.harness import evaluate_model
from geoalign.evaluation.queries import from_images
from geoalign.inference.locator import Geolocator
from geoalign.models.base import logits as model_logits
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig

runner = CliRunner()
N_PHOTOS = 6


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
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
    return f"hf:{path}"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A few generated photos of different sizes (the crops must differ from one another)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    lines = ["image,lat,lon"]
    for i in range(N_PHOTOS):
        h, w = 40 + 4 * i, 56 - 2 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{rng.uniform(-60, 60):.4f},{rng.uniform(-170, 170):.4f}")
    path = folder / "photos.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ten_crop_store(tiny_clip, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "ten-crop"
    args = ["features", "extract", str(manifest), "--out", str(out), "--backbone", tiny_clip]
    res = runner.invoke(app, [*args, "--dtype", "float32", "--ten-crop", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "10 ten-crop views each" in res.output
    return out


def _tiny_model(backbone: str) -> GeoCLIP:
    torch.manual_seed(0)
    return GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
            ),
            image_head=ImageHeadConfig(in_dim=24, hidden_dim=16, out_dim=8),
            queue_size=0,
            features=backbone,
        )
    ).eval()


def test_the_store_records_ten_crops_per_image(ten_crop_store):
    store = FeatureStore(ten_crop_store)
    index = json.loads((ten_crop_store / "index.json").read_text())
    assert index["views"]["kind"] == "ten-crop" and index["views"]["count"] == 10
    assert (store.views, store.view_kind) == (10, "ten-crop")
    feats = store[:]
    assert feats.shape == (N_PHOTOS, 10, 24)
    # the ten crops are ten different images, not one crop repeated
    assert np.abs(feats[:, 1:] - feats[:, :1]).max() > 1e-3
    assert store.info()["views"] == 10


def test_evaluating_the_store_equals_evaluating_the_photos_with_ten_crop(
    ten_crop_store, tiny_clip, manifest
):
    rows = load_feature_rows(str(ten_crop_store))
    photos = from_images(load_manifest(manifest), tiny_clip, ten_crop=True, batch_size=5)
    assert rows.features.shape == tuple(photos.features.shape) == (N_PHOTOS, 10, 24)
    np.testing.assert_allclose(rows.features, photos.features.numpy(), atol=1e-5)

    model = _tiny_model(tiny_clip)
    rng = np.random.default_rng(1)
    gallery = np.stack([rng.uniform(-80, 80, 64), rng.uniform(-180, 180, 64)], axis=1)
    from_store = evaluate_model(model, rows.features, rows.latlon, gallery, modes=["top1", "mode"])
    from_photos = evaluate_model(
        model, photos.features, photos.truth, gallery, modes=["top1", "mode"]
    )
    for a, b in zip(from_store, from_photos, strict=True):
        np.testing.assert_array_equal(a.latlon, b.latlon)  # the same predictions
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)

    geo = Geolocator(model, gallery=gallery)
    store_feats = torch.from_numpy(rows.features)
    logits = model_logits(model, geo.embed_features(store_feats), geo.candidates)
    photo_logits = model_logits(model, geo.embed_features(photos.features), geo.candidates)
    torch.testing.assert_close(logits, photo_logits, atol=1e-5, rtol=0)
    # and the ranked logits are the mean of the ten crops' own logits
    per_crop = [
        model_logits(model, geo.embed_features(store_feats[:, c]), geo.candidates)
        for c in range(10)
    ]
    torch.testing.assert_close(logits, torch.stack(per_crop).mean(0), atol=1e-5, rtol=0)


def test_training_from_a_ten_crop_store_is_refused_clearly(ten_crop_store, tmp_path):
    cfg = {
        "name": "tiny",
        "reproduces": "none (test)",
        "model": {
            "init": "scratch",
            "queue_size": 0,
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 8, "out_dim": 8},
        },  # fmt: skip
        "data": {"source": "store", "path": str(ten_crop_store)},
        "optim": {"batch_size": 2, "epochs": 1, "max_steps": 1},
        "trainer": {"progress": False, "out_dir": str(tmp_path / "run")},
        "eval": {"after_training": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path)])
    assert res.exit_code == 2, res.output
    assert "ten-crop store holds evaluation queries" in res.output
    assert "--views K --augment simclr" in res.output and "Traceback" not in res.output


def test_a_plain_rerun_into_a_ten_crop_store_is_refused(ten_crop_store, tiny_clip, manifest):
    args = ["features", "extract", str(manifest), "--out", str(ten_crop_store)]
    res = runner.invoke(app, [*args, "--backbone", tiny_clip, "--dtype", "float32"])
    assert res.exit_code == 2, res.output
    assert "views=" in res.output and "--overwrite" in res.output


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ten-crop", "--views", "4"], "--ten-crop and --views are exclusive"),
        (["--views", "0"], "--views must be at least 2"),
        (["--views", "1"], "--views must be at least 2"),
        (["--augment", "simclr"], "--augment applies to --views K"),
        (["--views", "3", "--augment", "autoaugment"], "--augment must be one of simclr"),
    ],
)
def test_bad_view_options_are_usage_errors_before_any_work(manifest, tmp_path, extra, needle):
    out = tmp_path / "store"
    res = runner.invoke(app, ["features", "extract", str(manifest), "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_geoalign_evaluate_reads_a_ten_crop_store_as_ten_crop_queries(
    ten_crop_store, tiny_clip, tmp_path
):
    model = tmp_path / "model"
    _tiny_model(tiny_clip).save(model)
    rng = np.random.default_rng(2)
    gallery = tmp_path / "gallery.csv"
    gallery.write_text(
        "lat,lon\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in rng.uniform(-60, 60, (30, 2)))
    )
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(model), "--queries", str(ten_crop_store)]
    res = runner.invoke(
        app, [*args, "--gallery", str(gallery), "--no-baselines", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_queries"] == N_PHOTOS
    assert "- ten-crop: True" in (out / "report.md").read_text()
