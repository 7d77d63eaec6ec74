"""`geoalign quickstart`: the full run (slow), and its promises about the numbers."""

import json

import pytest
from typer.testing import CliRunner

from geoalign.cli import app


def test_quickstart_help_says_it_downloads_nothing():
    result = CliRunner().invoke(app, ["quickstart", "--help"])
    assert result.exit_code == 0
    assert "Downloads nothing" in result.output


@pytest.mark.slow
def test_quickstart_trains_beats_one_nn_and_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "GeoCLIP alignment" in result.output and "1-NN" in result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["method"]: r for r in report["results"]}
    top1 = rows["GeoCLIP alignment (top-1)"]
    mode = rows["GeoCLIP alignment (mode, 750 km)"]
    nn1 = rows["1-NN"]
    prior = rows["prior: densest training location (750 km)"]
    for key in ("acc@750km", "acc@2500km"):
        assert top1[key] > nn1[key], (key, top1, nn1)  # the alignment beats 1-NN ...
        assert mode[key] > nn1[key] + 5
    assert mode["acc@750km"] > prior["acc@750km"]  # ... and mode seeking beats the constant there
    # the other two methods sit in the same table, trained on the same descriptors
    concept = rows["Concept-aware alignment (mode, 750 km)"]
    assert concept["acc@750km"] > nn1["acc@750km"] + 5
    geosurge = rows["GeoSURGE (geocell hierarchy) (top-1 cell)"]
    assert geosurge["acc@2500km"] > nn1["acc@2500km"]
    assert report["n_queries"] == 2997 and report["gallery_size"] == 10000
    for name in ("report.md", "predictions.csv", "errors_hist.png", "errors_map.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
