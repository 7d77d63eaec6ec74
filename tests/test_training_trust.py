"""Training configs and reruns a user can trust: every bad value is a one-line error naming the
key; `geoalign train` resumes whatever the config's trainer.resume says; a finished run says so;
a changed config is refused with the keys that differ."""

import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.errors import DataError
from geoalign.training.config import load_config
from geoalign.training.geosurge import load_geosurge_config

runner = CliRunner()


def tiny_config(**changes):
    cfg = {
        "name": "tiny",
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
        # the quickstart's setting: the Python API starts fresh, the CLI's --resume decides
        "trainer": {"progress": False, "checkpoint_every_n_steps": 2, "resume": None},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        cfg[section][name] = value
    return cfg


@pytest.mark.parametrize(
    "section, key, value, needle",
    [
        ("optim", "lr", -0.1, "optim.lr: -0.1 is not allowed: use a finite number >= 0"),
        ("optim", "lr", math.nan, "optim.lr: nan is not allowed"),
        ("optim", "weight_decay", -1e-6, "optim.weight_decay: -1e-06 is not allowed"),
        ("optim", "batch_size", 0, "optim.batch_size: 0 is not allowed: use a finite number >= 1"),
        ("optim", "epochs", 0, "optim.epochs: 0 is not allowed"),
        ("optim", "epochs", -1, "optim.epochs: -1 is not allowed"),
        ("optim", "max_steps", 0, "optim.max_steps: 0 is not allowed: use -1 (no limit)"),
        ("model", "queue_size", -1, "model.queue_size: -1 is not allowed"),
        ("model", "image_head", {"hiden_dim": 8}, "model.image_head: unknown key(s) ['hiden_dim']"),
        ("model", "location_encoder", {"sigma": [1]}, "model.location_encoder: unknown key(s)"),
        ("data", "fraction", 0.0, "data.fraction: 0.0 is not allowed: use a share in (0, 1]"),
    ],
)
def test_bad_geoclip_values_name_the_key_and_the_fix(tmp_path, section, key, value, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(DataError) as err:
        load_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("optim: {lr: -1}\n", "optim.lr: -1.0 is not allowed"),
        ("optim: {epochs: 0}\n", "optim.epochs: 0 is not allowed"),
        ("optim: {micro_batch_size: 0}\n", "optim.micro_batch_size: 0 is not allowed"),
        ("model: {fusion: {num_head: 2}}\n", "model.fusion: unknown key(s) ['num_head']"),
        ("cells: {tau_min: 0}\n", "cells.tau_min: 0 is not allowed"),
    ],
)
def test_bad_geosurge_values_name_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text("method: geosurge\n" + text)
    with pytest.raises(DataError, match="is not allowed|unknown key") as err:
        load_geosurge_config(path)
    assert needle in str(err.value)


def test_yaml_shape_errors_are_explained(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- optim\n- model\n")
    with pytest.raises(DataError, match="expected a mapping of sections .* got a list"):
        load_config(listed)
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n")
    with pytest.raises(DataError, match=r"twice\.yaml: line 4: key 'lr' appears twice"):
        load_config(twice)
    result = runner.invoke(app, ["train", str(twice)])
    assert result.exit_code == 2 and "appears twice" in result.output
    assert "Traceback" not in result.output


def test_cli_config_errors_are_one_line_with_exit_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    result = runner.invoke(app, ["train", str(path), "--set", "optim.epochs=-1", "--no-eval"])
    assert result.exit_code == 2, result.output
    assert "optim.epochs: -1 is not allowed" in result.output
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["quickstart", "--epochs", "0", "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and "--epochs 0" in result.output


def _train(path, out, *args):
    return runner.invoke(app, ["train", str(path), "--out", str(out), "--no-eval", *args])


def test_cli_resumes_over_a_null_resume_then_finishes_then_refuses_a_changed_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "run"
    first = _train(path, out, "--set", "optim.max_steps=4")
    assert first.exit_code == 0, first.output
    assert "4 steps in" in first.output
    # a longer run continues from last.ckpt (step 4) although the config says resume: null
    longer = _train(path, out, "--set", "optim.max_steps=6")
    assert longer.exit_code == 0, longer.output
    assert "resuming from" in longer.output and "(step 4)" in longer.output
    assert "2 steps in" in longer.output and "6 in all" in longer.output
    # the same again: nothing to train, no throughput made up
    again = _train(path, out, "--set", "optim.max_steps=6")
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output and "samples/s" not in again.output
    assert "6 steps, trained before" in again.output
    # other settings: refused before anything is written, naming the key and the way out
    saved = (out / "config.yaml").read_text()
    changed = _train(path, out, "--set", "optim.max_steps=6", "--set", "optim.lr=0.5")
    assert changed.exit_code == 2, changed.output
    assert "config differs from the checkpoint" in changed.output
    assert "optim.lr: 3e-05 -> 0.5" in changed.output and "--no-resume" in changed.output
    assert "Traceback" not in changed.output and (out / "config.yaml").read_text() == saved
    # --no-resume starts over
    fresh = _train(path, out, "--set", "optim.max_steps=6", "--set", "optim.lr=0.5", "--no-resume")
    assert fresh.exit_code == 0, fresh.output
    assert "6 steps in" in fresh.output and "resuming" not in fresh.output


def test_a_changed_architecture_is_refused_not_a_state_dict_crash(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "run"
    assert _train(path, out, "--set", "optim.max_steps=2").exit_code == 0
    wider = _train(
        path, out, "--set", "optim.max_steps=4", "--set", "model.image_head.hidden_dim=16"
    )
    assert wider.exit_code == 2, wider.output
    assert "model.image_head.hidden_dim: 8 -> 16" in wider.output


def test_geosurge_rerun_of_a_finished_run_trains_nothing_and_keeps_one_metrics_log(tmp_path):
    from geoalign.training.geosurge import geosurge_config_from_dict, train_geosurge

    rng = np.random.default_rng(0)
    centers = rng.uniform([-50, -160], [60, 160], size=(6, 2))
    which = rng.integers(0, 6, 400)
    pts = centers[which] + rng.normal(0, 1.0, (400, 2))
    feats = np.eye(8)[which].astype(np.float32)

    def cfg(epochs):
        return geosurge_config_from_dict(
            {
                "model": {"visual": "features", "feature_head": "linear", "embed_dim": 8},
                "cells": {"tau_max": [300, 100], "tau_min": 10},
                "data": {"source": "arrays", "val_fraction": 0.1, "num_workers": 0},
                "optim": {"batch_size": 64, "epochs": epochs, "lr": 1e-2, "patience": 5},
                "trainer": {
                    "out_dir": str(tmp_path / "run"),
                    "progress": False,
                    "accelerator": "cpu",
                    "log_every_n_steps": 1,
                },
            }
        )

    one = train_geosurge(cfg(1), arrays=(feats, pts))
    two = train_geosurge(cfg(2), arrays=(feats, pts))  # continues: one more epoch
    assert two.trained_steps == one.global_step and two.global_step == 2 * one.global_step
    again = train_geosurge(cfg(2), arrays=(feats, pts))
    assert again.trained_steps == 0 and again.global_step == two.global_step
    assert again.history == two.history and again.best == two.best
    import pandas as pd
    import torch

    for a, b in zip(again.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # one metrics.csv across the resume (Lightning's plain CSVLogger began a new version_N)
    frame = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    steps = frame.dropna(subset=["train/loss"])["step"]
    assert list(steps) == list(range(two.global_step))


def test_concept_run_resume_compares_the_concept_section_too(tmp_path):
    from geoalign.training.concept import concept_run_from_dict, train_concept

    rng = np.random.default_rng(0)
    coords = np.stack([rng.uniform(-50, 50, 200), rng.uniform(-150, 150, 200)], 1)
    feats = rng.normal(size=(200, 5)).astype("f4")

    def run(lam):
        raw = {
            "method": "concept",
            "model": {
                "init": "scratch",
                "queue_size": 0,
                "location_encoder": {
                    "n_frequencies": 8,
                    "hidden_dim": 16,
                    "n_hidden": 1,
                    "embed_dim": 16,
                },
                "image_head": {"hidden_dim": 16, "out_dim": 16},
            },
            "data": {"source": "arrays"},
            "optim": {"batch_size": 50, "epochs": 1},
            "trainer": {"out_dir": str(tmp_path / "run"), "progress": False},
            "concept": {"text_encoder": "tiny:16", "k": 10, "lambda_concept": lam},
            "cbm": {"fit": False},
        }
        return train_concept(concept_run_from_dict(raw, source="t"), arrays=(feats, coords))

    assert run(1.0).trained_steps == 4
    assert run(1.0).trained_steps == 0  # already complete
    with pytest.raises(DataError, match=r"concept\.lambda_concept: 1\.0 -> 0\.5"):
        run(0.5)
