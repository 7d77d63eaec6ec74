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
    res = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(photos), "--json", str(out), "-k", "3")
    )
    assert "resuming: 3 inputs" in res.stderr and "retrying 1" in res.stderr
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(again) == 4  # the failed input is recorded once, not once per run
    assert [r["source"] for r in again if "error" in r] == [bad[0]["source"]]


def test_table_on_stdout_errors_and_progress_on_stderr(tiny_clip, small_gallery, photos):
    """`geoalign predict x.jpg > o.txt` captures the table; the broken file is named on stderr."""
    good, bad = photos / "p0.jpg", photos / "broken.jpg"
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(good), str(bad), "-k", "2"))
    assert res.exit_code == 1, res.output
    assert str(good) in res.stdout and "prob" in res.stdout
    assert str(bad) not in res.stdout and str(bad) in res.stderr
    assert "loading model" not in res.stdout


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


# ------------------------------------------------------------------ output formats and manifests


def test_json_dash_writes_jsonl_to_stdout(tiny_clip, small_gallery, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--json", "-", "-k", "2"))
    assert res.exit_code == 1, res.output
    assert not (tmp_path / "-").exists()
    records = [json.loads(line) for line in res.stdout.splitlines()]  # nothing but JSONL
    assert len(records) == 4
    assert {r["schema"] for r in records} == {"geoalign.prediction/v1"}
    assert all(r["settings"]["top_k"] == 2 for r in records)
    ok = [r for r in records if "predictions" in r]
    assert [p["rank"] for p in ok[0]["predictions"]] == [1, 2]
    assert "broken.jpg" in res.stderr


def test_csv_and_geojson_outputs(tiny_clip, small_gallery, photos, tmp_path):
    import csv
    import io

    geo = tmp_path / "out.geojson"
    res = runner.invoke(
        app,
        _args(
            tiny_clip, small_gallery, str(photos), "--csv", "-", "--geojson", str(geo), "-k", "3"
        ),
    )
    assert res.exit_code == 1, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 3 * 3 + 1
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and failed[0]["source"].endswith("broken.jpg")
    good = [r for r in rows if not r["error"]]
    assert [r["rank"] for r in good[:3]] == ["1", "2", "3"]
    assert all(-90 <= float(r["lat"]) <= 90 and r["country_code"] for r in good)

    collection = json.loads(geo.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == 9
    for feature, row in zip(features, good, strict=True):
        lon, lat = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Point"
        assert (lat, lon) == (float(row["lat"]), float(row["lon"]))
        props = feature["properties"]
        assert props["source"] == row["source"] and props["rank"] == int(row["rank"])
        assert props["prob"] == float(row["prob"]) and props["place"]


def test_only_one_output_can_use_stdout(tiny_clip, small_gallery, photos):
    res = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(photos), "--json", "-", "--csv", "-")
    )
    assert res.exit_code == 2 and "only one output" in res.stderr


def test_manifest_inputs(tiny_clip, small_gallery, photos, tmp_path):
    import pandas as pd

    pd.DataFrame({"image": ["photos/p0.jpg", "photos/p1.jpg"]}).to_csv(
        photos.parent / "m.csv", index=False
    )
    pd.DataFrame({"path": [str(photos / "p2.jpg")]}).to_parquet(tmp_path / "m.parquet")
    res = runner.invoke(
        app,
        _args(
            tiny_clip,
            small_gallery,
            str(photos.parent / "m.csv"),
            str(tmp_path / "m.parquet"),
            "--json",
            "-",
        ),
    )
    assert res.exit_code == 0, res.output
    sources = [json.loads(line)["source"] for line in res.stdout.splitlines()]
    assert sources == [str(photos / f"p{i}.jpg") for i in range(3)]

    pd.DataFrame({"file": ["p0.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(tmp_path / "bad.csv")))
    assert res.exit_code == 2
    assert "bad.csv" in res.stderr and "`path` or `image` column" in res.stderr
    assert "file" in res.stderr


def test_resume_refuses_other_settings_and_repairs_a_torn_line(
    tiny_clip, small_gallery, photos, tmp_path
):
    import csv
    import io

    out = tmp_path / "out.jsonl"
    first = _args(tiny_clip, small_gallery, str(photos / "p0.jpg"), "--json", str(out), "-k", "2")
    assert runner.invoke(app, first).exit_code == 0
    before = out.read_text()
    with out.open("a") as fh:
        fh.write('{"schema": "geoalign.prediction/v1", "source": "x.jpg", "predic')  # a kill

    res = runner.invoke(app, [*first[:-2], "-k", "3", "--within", "FR"])
    assert res.exit_code == 2
    assert "--top-k was 2, now 3" in res.stderr and "--within" in res.stderr
    assert out.read_text().startswith(before)  # refused: nothing changed but the torn tail

    both = _args(
        tiny_clip, small_gallery, str(photos / "p0.jpg"), str(photos / "p1.jpg"), "-k", "2"
    )
    res = runner.invoke(app, [*both, "--json", str(out), "--csv", "-"])
    assert res.exit_code == 0, res.output
    assert "torn last line" in res.stderr and "resuming: 1 inputs" in res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]  # valid JSONL again
    assert [r["source"] for r in records] == [str(photos / "p0.jpg"), str(photos / "p1.jpg")]
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4  # the CSV covers the resumed input too

    res = runner.invoke(app, [*both, "-k", "3", "--json", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(len(r["predictions"]) == 3 for r in records)


def test_quiet_prints_results_but_no_progress(tiny_clip, small_gallery, photos):
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos / "p0.jpg"), "--quiet"))
    assert res.exit_code == 0, res.output
    assert "prob" in res.stdout and res.stderr == ""


def test_broken_links_and_empty_folders_are_reported_with_the_rest(
    tiny_clip, small_gallery, photos, tmp_path
):
    (photos / "dangling.jpg").symlink_to(photos / "nowhere.jpg")
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.jsonl"
    res = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(photos), str(empty), "--json", str(out))
    )
    assert res.exit_code == 1, res.output  # partial failure, not a usage error
    errors = {
        r["source"]: r["error"]
        for r in map(json.loads, out.read_text().splitlines())
        if "error" in r
    }
    assert "broken symbolic link" in errors[str(photos / "dangling.jpg")]
    assert "loop" in errors[str(photos / "loop.jpg")]
    assert "no image files" in errors[str(empty)]
    assert str(photos / "broken.jpg") in errors
    assert str(photos / "p0.jpg") in res.stdout
    assert "4 of 7 inputs could not be read" in res.stderr


def test_resume_with_fewer_inputs_counts_only_this_runs(tiny_clip, small_gallery, photos, tmp_path):
    import csv
    import io

    out = tmp_path / "out.jsonl"
    args = _args(tiny_clip, small_gallery, "-k", "2", "--json", str(out))
    assert (
        runner.invoke(app, [*args, str(photos / "p0.jpg"), str(photos / "p1.jpg")]).exit_code == 0
    )
    res = runner.invoke(app, [*args, str(photos / "p1.jpg"), "--csv", "-"])
    assert res.exit_code == 0, res.output
    assert "resuming: 1 inputs" in res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["source"] for r in rows} == {str(photos / "p1.jpg")}  # only this run's inputs
    assert len(out.read_text().splitlines()) == 2  # the file keeps both


def test_sigkilled_predict_resumes_to_the_uninterrupted_result(tiny_clip, small_gallery, tmp_path):
    """A real SIGKILL mid-run, then a rerun: the JSONL equals an uninterrupted run's, line for line."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"img{i:02d}.png"
        )
    args = _args(tiny_clip, small_gallery, str(folder), "-k", "2", "--batch-size", "1", "--quiet")
    reference, killed = tmp_path / "reference.jsonl", tmp_path / "killed.jsonl"
    assert runner.invoke(app, [*args, "--json", str(reference)]).exit_code == 0

    slow_decoder = (  # 50 ms per photo, so that the kill lands mid-run
        "import sys, time, geoalign.data.images as m\n"
        "prepare = m.prepare_image\n"
        "m.prepare_image = lambda *a, **k: (time.sleep(0.05), prepare(*a, **k))[1]\n"
        "from geoalign.cli import main\n"
        "sys.argv = ['geoalign', *sys.argv[1:]]\n"
        "main()\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", slow_decoder, *args, "--json", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if killed.exists() and killed.read_text().count("\n") >= 3:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert child.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed.read_text().count("\n") < 20

    res = runner.invoke(app, [*args, "--json", str(killed)])
    assert res.exit_code == 0, res.output
    assert killed.read_text() == reference.read_text()


@pytest.mark.parametrize("option", ["--json", "--csv", "--geojson", "--map", "--png"])
def test_an_output_that_is_a_folder_is_refused_up_front(
    tiny_clip, small_gallery, photos, tmp_path, option
):
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), option, str(tmp_path)))
    assert res.exit_code == 2
    assert f"{option} {tmp_path}: is a folder" in res.stderr and "Traceback" not in res.output


def test_bad_device_and_workers_are_usage_errors(tiny_clip, small_gallery, photos):
    import torch

    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--workers", "-1"))
    assert res.exit_code == 2 and "--workers" in res.stderr
    if not torch.cuda.is_available():
        res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--device", "cuda"))
        assert res.exit_code == 2 and "no CUDA GPU" in res.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("path\n", "lists no images (header only)"), ('path\np0.jpg\n""\n', "row 2: empty `path`")],
)
def test_manifest_errors_name_the_file_and_row(
    tiny_clip, small_gallery, tmp_path, content, message
):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(manifest)))
    assert res.exit_code == 2
    assert f"{manifest}" in res.stderr and message in res.stderr


def test_estimates_regions_and_abstention(tiny_clip, small_gallery, photos, tmp_path):
    from shapely.geometry import shape

    geo = tmp_path / "out.geojson"
    res = runner.invoke(
        app,
        _args(
            tiny_clip,
            small_gallery,
            str(photos),
            "--json",
            "-",
            "--geojson",
            str(geo),
            "--estimate",
            "median",
            "--regions",
            "0.5,0.9",
            "--abstain-above-km",
            "1",
        ),
    )
    assert res.exit_code == 1, res.output  # broken.jpg
    ok = [json.loads(line) for line in res.stdout.splitlines()]
    ok = [r for r in ok if "predictions" in r]
    assert len(ok) == 3
    for r in ok:
        assert r["estimate"]["kind"] == "median" and -90 <= r["estimate"]["lat"] <= 90
        (r50, r90) = r["regions"]
        assert (r50["p"], r90["p"]) == (0.5, 0.9)
        assert 0 < r50["area_km2"] <= r90["area_km2"] and r90["mass"] >= 0.9
        assert "90% region" in r90["summary"]
        # a random tiny model is not localizable within 1 km: every photo abstains
        assert r["localizability_km"] > 1 and "abstain-above-km 1" in r["abstained"]
    regions = [
        f
        for f in json.loads(geo.read_text())["features"]
        if f["properties"].get("kind") == "region"
    ]
    assert len(regions) == 6 and all(shape(f["geometry"]).is_valid for f in regions)
    table = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(photos / "p0.jpg"), "--regions", "0.9")
    )
    assert table.exit_code == 0 and "90% region:" in table.stdout
    for bad, message in (("--regions", "1.5"), ("--regions", "x"), ("--estimate", "centroid")):
        res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), bad, message))
        assert res.exit_code == 2 and "error" in res.stderr


def test_retrieval_k_predicts_as_the_python_api_with_training_neighbours(
    tiny_clip, small_gallery, photos, tmp_path
):
    from geoalign.inference.locator import Geolocator

    rng = np.random.default_rng(1)
    train = tmp_path / "train.npz"
    coords = np.stack([rng.uniform(-50, 60, 40), rng.uniform(-170, 170, 40)], 1)
    np.savez(train, features=rng.normal(size=(40, 768)).astype(np.float32), coords=coords)
    images = [str(photos / f"p{i}.jpg") for i in range(3)]
    args = [*images, "--retrieval-k", "3", "--train", str(train), "--no-places", "--json", "-"]
    res = runner.invoke(app, _args(tiny_clip, small_gallery, *args))
    assert res.exit_code == 0, res.output
    got = [json.loads(line) for line in res.stdout.splitlines()]

    data = np.load(train)
    geo = Geolocator.from_pretrained(
        "geoclip", backbone=f"hf:{tiny_clip}", gallery=str(small_gallery)
    ).with_training_neighbours(data["features"], data["coords"], k=3)
    want = geo.predict(images, top_k=5)
    for record, pred in zip(got, want, strict=True):
        assert [c["gallery_index"] for c in record["predictions"]] == [
            c.gallery_index for c in pred.candidates
        ]
        assert [c["prob"] for c in record["predictions"]] == pytest.approx(
            [c.prob for c in pred.candidates], rel=1e-5
        )


def test_retrieval_k_without_training_features_is_a_usage_error(tiny_clip, small_gallery, photos):
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--retrieval-k", "3"))
    assert res.exit_code == 2 and "records no training feature store" in res.stderr
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(photos), "--train", "x.npz"))
    assert res.exit_code == 2 and "give --retrieval-k K too" in res.stderr
