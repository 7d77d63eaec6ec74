"""`geoalign train CONFIG --set ...` writes a run folder with checkpoints and an exported model."""

import yaml
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.models.geoclip import GeoCLIP


def test_train_command_runs_a_config(tmp_path):
    cfg = {
        "name": "tiny-scene-labels",
        "reproduces": "none (test)",
        "model": {
            "init": "scratch",
            "queue_size": 32,
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 8, "out_dim": 8},
            "features": "places365-scene-labels",
        },
        "data": {"source": "scene-labels", "path": "im2gps"},
        "optim": {"batch_size": 32, "epochs": 1},
        "trainer": {"progress": False},
        "eval": {"benchmark": "im2gps", "gallery": "train:200", "modes": ["top1"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(path), "--out", str(out), "--set", "optim.max_steps=3"]
    )
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output
    model = GeoCLIP.load(out / "model")
    assert (
        model.config.image_head.in_dim == 387 and model.config.features == "places365-scene-labels"
    )
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["max_steps"] == 3 and saved["trainer"]["out_dir"] == str(out)
    # training ends with the config's evaluation: the model beside the baselines, as a report
    report = (out / "eval" / "report.md").read_text()
    assert "tiny-scene-labels" in report and "1-NN" in report
    assert "tiny-scene-labels" in result.output  # the accuracy table, printed


def test_train_command_no_eval_skips_the_evaluation(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"init": "scratch", "queue_size": 0, "features": "x"},
                "data": {"source": "scene-labels", "path": "im2gps"},
                "optim": {"batch_size": 64, "max_steps": 1},
                "trainer": {"progress": False},
            }
        )
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(out), "--no-eval"])
    assert result.exit_code == 0, result.output
    assert (out / "model").is_dir() and not (out / "eval").exists()


def test_train_command_reports_config_errors_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {batch: 3}\n")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code != 0
    assert "unknown key" in str(result.exception) or "unknown key" in result.output
