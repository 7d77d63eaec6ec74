"""`geoalign evaluate --photos SHARDS`: truth from each sample's json/txt, the same figures as
evaluating the same photos as loose files + a manifest, bad samples left out and noted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.manifest import load_manifest
from geoalign.data.wds import write_shards
from test_trust2_evaluate import _tiny_model, gallery, tiny_clip  # noqa: F401  (fixtures)

runner = CliRunner()
N = 9


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path]:
    """(manifest of N loose photos, the same photos written as 3 shards)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    names = [f"p{i}.jpg" for i in range(N)]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (40, 44 + i, 3), dtype=np.uint8)).save(folder / name)
    frame = pd.DataFrame(
        {"image": names, "lat": rng.uniform(-60, 60, N), "lon": rng.uniform(-170, 170, N)}
    )
    frame.to_csv(folder / "manifest.csv", index=False)
    manifest = load_manifest(folder / "manifest.csv", check_files=True).clean()
    write_shards(manifest, tmp_path / "wds", shard_size=4)
    return folder / "manifest.csv", tmp_path / "wds"


def _report(args: list[str]) -> dict:
    res = runner.invoke(app, ["evaluate", *args, "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _model_rows(report: dict) -> dict[str, dict]:
    return {r["method"]: r for r in report["results"] if r["kind"] == "model"}


def test_photos_from_shards_equal_loose_files_and_manifest(tiny_clip, gallery, photos, tmp_path):  # noqa: F811
    manifest, wds = photos
    model = _tiny_model(tmp_path / "model", 24, f"hf:{tiny_clip}")
    common = ["--model", str(model), "--gallery", str(gallery), "--no-baselines"]
    common += ["--prior-radius-km", "2500"]  # GeoCLIP Table 5 rows from shards too
    loose = _report([*common, "--manifest", str(manifest), "--out", str(tmp_path / "a")])
    shards = _report(
        [*common, "--photos", str(wds / "{000000..000002}.tar"), "--out", str(tmp_path / "b")]
    )
    assert shards["n_queries"] == loose["n_queries"] == N
    want, got = _model_rows(loose), _model_rows(shards)
    assert set(got) == set(want) and want
    assert any("2500" in method for method in got), list(got)  # the prior-radius rows
    for method, row in want.items():
        for key in ("acc@1km", "acc@25km", "acc@200km", "acc@750km", "acc@2500km"):
            assert got[method]["metrics"][key] == row["metrics"][key], (method, key)
        assert got[method]["metrics"]["median_km"] == pytest.approx(
            row["metrics"]["median_km"], rel=1e-5
        )


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def test_truth_from_json_or_txt_and_bad_samples_left_out(tiny_clip, gallery, tmp_path):  # noqa: F811
    shard = _tar(
        tmp_path / "mixed.tar",
        [
            ("a.jpg", _jpeg(0)),
            ("a.json", json.dumps({"latitude": 48.85, "longitude": 2.35}).encode()),
            ("b.jpg", _jpeg(1)),
            ("b.txt", b"-33.9,151.2"),
            ("c.jpg", _jpeg(2)),  # no coordinates: left out, noted
            ("d.jpg", b"not a jpeg"),
            ("d.json", b'{"lat": 1, "lon": 2}'),  # undecodable: left out, noted
        ],
    )
    model = _tiny_model(tmp_path / "model", 24, f"hf:{tiny_clip}")
    out = tmp_path / "report"
    report = _report(
        [
            "--model",
            str(model),
            "--gallery",
            str(gallery),
            "--photos",
            str(shard),
            "--out",
            str(out),
        ]
    )
    assert report["n_queries"] == 2
    frame = pd.read_csv(out / "predictions.csv")
    assert frame["id"].astype(str).tolist() == ["a", "b"]  # sample keys are the ids
    assert frame[["true_lat", "true_lon"]].to_numpy().tolist() == [[48.85, 2.35], [-33.9, 151.2]]
    notes = report["meta"]["notes"]
    assert "1 unreadable photos left out (first: d)" in notes
    assert "1 unusable shard samples left out" in notes and "'c'" in notes


def test_photos_usage_errors_name_the_option(tiny_clip, gallery, photos, tmp_path):  # noqa: F811
    manifest, wds = photos
    base = ["evaluate", "--model", str(tmp_path), "--out", str(tmp_path / "r")]
    cases = {
        ("--photos", str(wds), "--manifest", str(manifest)): "not both",
        ("--photos", str(wds), "--gallery", "train:10", "--train", "x"): "baselines and train:N",
        ("--photos", str(tmp_path / "none-{000000..000001}.tar")): "shard not found",
    }
    for extra, message in cases.items():
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert "Traceback" not in res.output


def test_eval_images_after_training_accepts_shards(photos):
    """`eval.images` (the evaluation `geoalign train` runs at the end) reads shards too."""
    from geoalign.data.wds_images import ShardPhotos
    from geoalign.evaluation.run import _photo_queries

    manifest, wds = photos
    found, truth, ids, name = _photo_queries(str(wds / "{000000..000002}.tar"), "im2gps3k")
    assert isinstance(found, ShardPhotos) and name == "im2gps3k"
    assert ids == [f"{i + 1:09d}" for i in range(N)]
    want = load_manifest(manifest, check_files=True).clean().coords()
    np.testing.assert_allclose(truth, want)
