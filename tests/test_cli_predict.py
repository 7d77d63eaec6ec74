"""`geoalign predict` end to end with a tiny CLIP vision tower saved locally (no download)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=768,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory):
    from geoalign.data.galleries import load_gallery

    g = load_gallery("geoclip-100k").sample(2000, random_state=0)
    path = tmp_path_factory.mktemp("gallery") / "g.csv"
    g[["lat", "lon"]].to_csv(path, index=False)
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / f"p{i}.jpg"
        )
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    return folder


def _args(tiny_clip, small_gallery, *extra):
    return ["predict", "--backbone", f"hf:{tiny_clip}", "--gallery", str(small_gallery), *extra]


def test_folder_jsonl_errors_and_resume(tiny_clip, small_gallery, photos, tmp_path):
    out = tmp_path / "out.jsonl"
    res = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(photos), "--json", str(out), "-k", "3")
    )
    assert res.exit_code == 1, res.output  # one input failed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4
    bad = [r for r in records if "error" in r]
    assert len(bad) == 1 and bad[0]["source"].endswith("broken.jpg")
    good = [r for r in records if "predictions" in r]
    for r in good:
        assert len(r["predictions"]) == 3
        probs = [p["prob"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert "country_code" in r["predictions"][0]["place"]
    # resume: the three done photos are skipped, only the broken one is retried
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--json", str(out)))
    assert "resuming: 3 inputs" in res.output
    assert len(out.read_text().splitlines()) == 5


def test_prior_restricts_to_country_and_maps(tiny_clip, small_gallery, photos, tmp_path):
    from geoalign.geo.priors import Country

    html, png = tmp_path / "m.html", tmp_path / "m.png"
    out = tmp_path / "fr.jsonl"
    res = runner.invoke(
        app,
        _args(
            tiny_clip,
            small_gallery,
            str(photos / "p0.jpg"),
            "--within",
            "FR",
            "--json",
            str(out),
            "--map",
            str(html),
            "--png",
            str(png),
        ),
    )
    assert res.exit_code == 0, res.output
    preds = json.loads(out.read_text())["predictions"]
    latlon = np.array([[p["lat"], p["lon"]] for p in preds])
    assert Country("FR").mask(latlon).all()
    page = html.read_text()
    assert all(repr(p["lat"]) in page and repr(p["lon"]) in page for p in preds)
    assert png.stat().st_size > 1000


def test_no_images_is_a_clear_error(tiny_clip, small_gallery, tmp_path):
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(tmp_path)))
    assert res.exit_code == 2 and "no image files" in res.output


def test_python_api_accepts_mixed_inputs(tiny_clip, small_gallery, photos):
    import torch

    from geoalign import Geolocator
    from geoalign.data.galleries import load_gallery

    g = Geolocator.from_pretrained(backbone=f"hf:{tiny_clip}", gallery=load_gallery(small_gallery))
    pil = Image.open(photos / "p1.jpg")
    arr = np.asarray(pil)
    tensor = g.backbone.transform(pil)[None]
    preds = g.predict([str(photos / "p1.jpg"), pil, arr, tensor], top_k=2)
    assert [p.ok for p in preds] == [True] * 4
    first = [(c.lat, c.lon) for c in preds[0].candidates]
    assert all([(c.lat, c.lon) for c in p.candidates] == first for p in preds)
    ten = g.predict([pil], top_k=2, ten_crop=True)[0]
    assert ten.ok and len(ten.candidates) == 2
    assert isinstance(g.embed_pixels(torch.stack([tensor[0]] * 2)), torch.Tensor)
