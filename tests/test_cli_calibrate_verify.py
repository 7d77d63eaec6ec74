"""`geoalign calibrate` stores a calibration the next commands use; `geoalign verify` checks EXIF
or given claims against the image (tiny random models, photos written with known GPS tags)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational as R
from typer.testing import CliRunner

from geoalign.cli import app
from test_architecture import tiny_geoclip
from test_cli_predict import small_gallery, tiny_clip  # noqa: F401  (fixtures)

runner = CliRunner()


def _model_and_rows(tmp_path, n: int):
    """A tiny GeoCLIP checkpoint in tmp_path/model and n random validation rows in val.npz."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "val.npz",
        features=rng.normal(size=(n, 12)).astype(np.float32),
        coords=rng.uniform([-50, -120], [60, 140], (n, 2)),
    )
    return tiny_geoclip().save(tmp_path / "model")


def test_calibrate_stores_the_calibration_in_the_checkpoint(tmp_path, small_gallery):  # noqa: F811
    from geoalign.inference.locator import Geolocator

    path = _model_and_rows(tmp_path, 60)
    args = [
        "calibrate",
        "-m",
        str(path),
        "--queries",
        str(tmp_path / "val.npz"),
        "--gallery",
        str(small_gallery),
    ]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (
        summary["n"] == 60
        and summary["scale"] > 0
        and summary["nll_after"] <= summary["nll_before"]
    )
    stored = json.loads((path / "config.json").read_text())["calibration"]
    assert stored["scale"] == summary["scale"] and stored["level"] == summary["level"]
    geo = Geolocator.from_pretrained(str(path), backbone=None, gallery=str(small_gallery))
    assert geo.calibration is not None and geo.calibration.scale == stored["scale"]
    # named weights are not changed in place; a calibrated copy goes to --out
    res = runner.invoke(app, ["calibrate", "-m", "geoclip", "--queries", str(tmp_path / "val.npz")])
    assert res.exit_code == 2 and "--out" in res.stderr
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "model")])
    assert res.exit_code == 2 and "not empty" in res.stderr


def test_calibrate_out_writes_a_whole_copy_or_none(tmp_path, small_gallery, monkeypatch):  # noqa: F811
    import geoalign.inference.calibration as calibration

    path = _model_and_rows(tmp_path, 40)
    args = ["calibrate", "-m", str(path), "--queries", str(tmp_path / "val.npz")]
    args += ["--gallery", str(small_gallery), "--json", "--out"]
    res = runner.invoke(app, [*args, str(tmp_path / "runs" / "calibrated")])
    assert res.exit_code == 0, res.output
    copy = tmp_path / "runs" / "calibrated"
    assert "calibration" in json.loads((copy / "config.json").read_text())
    assert "calibration" not in json.loads((path / "config.json").read_text())  # untouched
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in path.iterdir())

    def fails(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(calibration, "save_calibration", fails)
    res = runner.invoke(app, [*args, str(tmp_path / "runs" / "second")])
    assert res.exit_code != 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["calibrated"]


def _gps_photo(path, lat_ref="N", lat=(48, 51, 30), lon_ref="E", lon=(2, 17, 40)):
    exif = Image.Exif()
    exif[0x8825] = {
        1: lat_ref,
        2: tuple(R(v, 1) for v in lat),
        3: lon_ref,
        4: tuple(R(v, 1) for v in lon),
    }
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path, exif=exif)
    return path


def test_verify_exif_and_given_claims(tmp_path, tiny_clip, small_gallery):  # noqa: F811
    with_gps = _gps_photo(tmp_path / "paris.jpg")
    without = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 40)).save(without)
    base = [
        "verify",
        "--backbone",
        f"hf:{tiny_clip}",
        "--gallery",
        str(small_gallery),
        "--json",
        "-",
    ]
    res = runner.invoke(app, [*base, str(with_gps), str(without)])
    assert res.exit_code == 1, res.output  # the photo without EXIF could not be checked
    first, second = (json.loads(line) for line in res.stdout.splitlines())
    assert first["schema"] == "geoalign.verification/v1" and first["claim_source"] == "exif"
    assert first["claimed_lat"] == pytest.approx(48 + 51 / 60 + 30 / 3600)
    assert first["verdict"] in ("consistent", "inconsistent") and 0 <= first["level"] <= 1
    assert first["consistent"] == (first["level"] <= 0.95)
    assert "no EXIF GPS" in second["error"] and "--claimed" in second["error"]
    res = runner.invoke(app, [*base, "--claimed", "-33.86,151.21", str(without)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["claim_source"] == "given"
    for bad in (["--alpha", "0"], ["--claimed", "north"], ["--claimed", "95,0"]):
        res = runner.invoke(app, [*base, *bad, str(without)])
        assert res.exit_code != 0 and "Traceback" not in res.output
