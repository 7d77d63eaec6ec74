"""Photo verification: EXIF GPS read from files written with known tags, malformed tags named,
and verdicts that follow the distribution's regions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational as R

from geoalign.errors import DataError, GeoalignError
from geoalign.inference.distribution import CellGrid, Distribution
from geoalign.inference.verify import read_exif_gps, verify_claim


def _photo(path, gps: dict | None):
    exif = Image.Exif()
    if gps is not None:
        exif[0x8825] = gps
    Image.new("RGB", (16, 16), (90, 120, 200)).save(path, exif=exif)
    return path


def _dms(d, m, s):
    return (R(d, 1), R(m, 1), R(int(s * 10), 10))


@pytest.mark.parametrize(
    ("lat_ref", "lon_ref", "sign"), [("N", "E", (1, 1)), ("S", "W", (-1, -1)), ("N", "W", (1, -1))]
)
def test_exif_gps_round_trip(tmp_path, lat_ref, lon_ref, sign):
    gps = {1: lat_ref, 2: _dms(48, 51, 29.6), 3: lon_ref, 4: _dms(2, 17, 40.2)}
    lat, lon = read_exif_gps(_photo(tmp_path / "p.jpg", gps))
    assert lat == pytest.approx(sign[0] * (48 + 51 / 60 + 29.6 / 3600))
    assert lon == pytest.approx(sign[1] * (2 + 17 / 60 + 40.2 / 3600))


@pytest.mark.parametrize(
    ("gps", "message"),
    [
        (None, "no EXIF GPS location; give the claim with --claimed"),
        ({1: "N", 2: (R(48, 0), R(1, 1), R(0, 1)), 3: "E", 4: _dms(2, 0, 0)}, "zero denominator"),
        ({1: "N", 2: _dms(48, 75, 0), 3: "E", 4: _dms(2, 0, 0)}, "out of range"),
        ({1: "N", 2: _dms(48, 10, 61), 3: "E", 4: _dms(2, 0, 0)}, "out of range"),
        ({1: "X", 2: _dms(48, 10, 0), 3: "E", 4: _dms(2, 0, 0)}, "GPSLatitudeRef is 'X'"),
        ({1: "N", 2: _dms(95, 0, 0), 3: "E", 4: _dms(2, 0, 0)}, "EXIF GPS"),
    ],
)
def test_missing_or_malformed_exif_is_a_clear_error(tmp_path, gps, message):
    with pytest.raises(GeoalignError, match=message):
        read_exif_gps(_photo(tmp_path / "p.jpg", gps))


def test_not_an_image(tmp_path):
    (tmp_path / "x.jpg").write_text("not a jpeg")
    with pytest.raises(DataError, match="cannot read the image"):
        read_exif_gps(tmp_path / "x.jpg")


def test_verdict_follows_the_regions():
    rng = np.random.default_rng(0)
    pts = rng.normal([48.8, 2.3], [1.0, 1.5], (300, 2))
    dist = Distribution(CellGrid(pts), np.ones(300))
    near = verify_claim(dist, (48.8, 2.3), alpha=0.05)
    far = verify_claim(dist, (40.4, -3.7), alpha=0.05)  # Madrid, ~1,050 km away
    assert near.consistent and near.level <= 0.95 and near.verdict == "consistent"
    assert not far.consistent and far.level == 1.0 and far.distance_km > 900
    assert near.to_dict()["verdict"] == "consistent" and far.region_area_km2 > 0
    with pytest.raises(DataError, match="alpha must be strictly between 0 and 1"):
        verify_claim(dist, (48.8, 2.3), alpha=1.5)
    with pytest.raises(GeoalignError, match="claimed location"):
        verify_claim(dist, (91.0, 2.3))
