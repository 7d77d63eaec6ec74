"""Error messages show numbers and names as a user wrote them: `nan`, `95.0`, 'a.jpg' — never
numpy reprs such as `np.float64(nan)` or `np.str_('a.jpg')`."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.errors import CoordinateError, shown
from geoalign.geo.coords import validate_latlon
from geoalign.geo.priors import Radius


def test_shown_unwraps_numpy_scalars():
    assert shown(np.float64("nan")) == "nan" and shown(np.float32(95)) == "95.0"
    assert shown(np.str_("a.jpg")) == "'a.jpg'" and shown(np.int64(3)) == "3"
    assert shown([1, 2]) == "[1, 2]" and shown("x") == "'x'"


def test_places_lookup_nan_names_the_value_plainly():
    res = CliRunner().invoke(app, ["places", "lookup", "nan", "5"])
    assert res.exit_code == 2, res.output
    assert "not a finite number: nan" in res.stderr and "np." not in res.output


@pytest.mark.parametrize(
    "call",
    [
        lambda: validate_latlon(np.array([95.0]), np.array([1.0])),
        lambda: validate_latlon(np.array([np.nan]), np.array([1.0])),
        lambda: Radius(1.0, 2.0, np.float64(-1.0)),
    ],
)
def test_coordinate_errors_hold_no_numpy_repr(call):
    with pytest.raises(CoordinateError) as err:
        call()
    assert "np." not in str(err.value)


def test_duplicate_image_message_quotes_the_plain_name(tmp_path):
    from geoalign.data.manifest import load_manifest

    path = tmp_path / "m.csv"
    path.write_text("image,lat,lon\na.jpg,1,2\na.jpg,3,4\n")
    report = load_manifest(path).report
    text = " ".join(str(i) for i in report.issues)
    assert "'a.jpg' is also listed" in text and "np." not in text
