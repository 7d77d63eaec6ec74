"""`geoalign train CONFIG --seeds N`: N runs with consecutive seeds, each evaluated, and a summary
of mean ± std per metric computed from their reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geoalign.cli import app


def tiny_config(tmp_path):
    cfg = {
        "name": "tiny-seeds",
        "reproduces": "none (test)",
        "model": {
            "init": "scratch",
            "queue_size": 32,
            "features": "places365-scene-labels",
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 8, "out_dim": 8},
        },  # fmt: skip
        "data": {"source": "scene-labels", "path": "im2gps"},
        "optim": {"batch_size": 32, "epochs": 1, "max_steps": 3},
        "trainer": {"progress": False, "seed": 5},
        "eval": {"benchmark": "im2gps", "gallery": "train:200", "modes": ["top1"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_seeds_train_evaluate_and_summarise(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["train", str(tiny_config(tmp_path)), "--out", str(out), "--seeds", "3"]
    )
    assert result.exit_code == 0, result.output
    for seed in (5, 6, 7):  # trainer.seed 5, then 6 and 7
        run = out / f"seed-{seed}"
        assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["seed"] == seed
        assert (run / "eval" / "report.json").is_file()
    reports = [
        json.loads((out / f"seed-{s}" / "eval" / "report.json").read_text()) for s in (5, 6, 7)
    ]
    model = [[r for r in rep["results"] if r["kind"] == "model"][0] for rep in reports]
    acc = np.array([m["metrics"]["acc@2500km"] for m in model])
    summary = json.loads((out / "summary" / "summary.json").read_text())
    assert summary["seeds"] == [5, 6, 7]
    row = next(r for r in summary["rows"] if r["kind"] == "model")
    assert row["runs"] == 3 and row["method"] == model[0]["method"]
    assert row["acc@2500km_mean"] == pytest.approx(acc.mean())
    assert row["acc@2500km_std"] == pytest.approx(acc.std(ddof=1))
    weights = [(out / f"seed-{s}" / "model" / "model.safetensors").read_bytes() for s in (5, 6, 7)]
    assert len(set(weights)) == 3  # three different runs, not one run three times
    md = (out / "summary" / "summary.md").read_text()
    assert "mean ± std over 3 runs" in md and " ± " in md.split("\n")[-2]
    assert "mean ± std over 3 runs" in result.stdout  # the summary is the command's result


def test_one_seed_keeps_the_run_folder(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["train", str(tiny_config(tmp_path)), "--out", str(out), "--no-eval"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "model").is_dir() and not (out / "seed-5").exists()
