"""`images check --json` and `data check --json`: a folder is a usage error, `-` is stdout, and the
report is written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app

runner = CliRunner()


def _inputs(tmp_path: Path) -> dict[str, list[str]]:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("nope")
    (tmp_path / "m.csv").write_text("image,lat,lon\ngood.png,1,2\nbad.png,95,2\n")
    return {
        "images": ["images", "check", str(tmp_path / "good.png"), str(tmp_path / "bad.png")],
        "data": ["data", "check", str(tmp_path / "m.csv")],
    }


@pytest.mark.parametrize("command", ["images", "data"])
def test_json_to_a_folder_is_a_usage_error(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    res = runner.invoke(app, [*_inputs(tmp_path)[command], "--json", str(folder)])
    assert res.exit_code == 2 and "--json" in res.output and "is a folder" in res.output


@pytest.mark.parametrize("command", ["images", "data"])
def test_json_dash_is_stdout(tmp_path: Path, command: str) -> None:
    res = runner.invoke(app, [*_inputs(tmp_path)[command], "--json", "-"])
    assert res.exit_code == 1, res.output  # one bad image / row
    report = json.loads(res.stdout)
    assert report and not (tmp_path / "-").exists()


@pytest.mark.parametrize("command", ["images", "data"])
def test_json_report_leaves_no_temp_file(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out" / "report.json"
    res = runner.invoke(app, [*_inputs(tmp_path)[command], "--json", str(out)])
    assert res.exit_code == 1 and json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]


@pytest.mark.parametrize("command,needle", [("images", "bad.png"), ("data", "latitude")])
def test_the_check_report_is_the_result_on_stdout(tmp_path: Path, command: str, needle: str):
    """Without `--json -` the report (summary and bad entries) is stdout; stderr keeps messages."""
    res = runner.invoke(app, _inputs(tmp_path)[command])
    assert res.exit_code == 1, res.output
    assert needle in res.stdout.lower() and needle not in res.stderr.lower()


def test_benchmark_listing_is_on_stdout() -> None:
    res = runner.invoke(app, ["data", "benchmarks"])
    assert res.exit_code == 0 and "im2gps3k" in res.stdout and res.stderr == ""
