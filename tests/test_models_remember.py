"""A model trained from a feature store remembers itself: the store's backbone, the gallery and
benchmark its after-training evaluation used. `evaluate`, `predict` and the Python API default
to them, and the report of the user's own store is labelled by that store, without the
published Im2GPS3k rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.feature_store_import import store_arrays
from geoalign.inference.locator import Geolocator
from test_trust_cli_features import tiny_clip  # noqa: F401  (a fixture: a random 24-d CLIP)

runner = CliRunner()
DIM = 24  # the tiny CLIP's projection width


def _store(path: Path, n: int, seed: int, spec: str) -> Path:
    rng = np.random.default_rng(seed)
    coords = np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-150, 150, n)])
    feats = rng.normal(size=(n, DIM)).astype(np.float32)
    store_arrays(feats, coords, path, backbone={"spec": spec, "embed_dim": DIM})
    return path


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):  # noqa: F811
    """A tiny GeoCLIP trained 3 steps on a store, evaluated on another store ("holdout")."""
    root = tmp_path_factory.mktemp("remember")
    train = _store(root / "train-store", 120, 0, tiny_clip)
    holdout = _store(root / "holdout", 30, 1, tiny_clip)
    cfg = {
        "name": "tiny-store",
        "model": {
            "init": "scratch",
            "queue_size": 8,
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 8, "out_dim": 8},
        },
        "data": {"source": "store", "path": str(train)},
        "optim": {"batch_size": 16, "epochs": 1, "max_steps": 3},
        "trainer": {"progress": False, "out_dir": str(root / "run"), "accelerator": "cpu"},
        "eval": {
            "queries": str(holdout),
            "gallery": "train:50",
            "modes": ["top1"],
            "baselines": False,
        },
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path)])
    assert res.exit_code == 0, res.output
    (root / "train-stdout.txt").write_text(res.stdout)
    return root, tiny_clip


def test_the_checkpoint_records_backbone_gallery_and_benchmark(trained):
    root, spec = trained
    config = json.loads((root / "run" / "model" / "config.json").read_text())
    assert config["backbone"] == spec and config["geoclip"]["features"] == spec
    assert config["gallery"] == "gallery.csv" and config["benchmark"] == "holdout"
    gallery = (root / "run" / "model" / "gallery.csv").read_text().splitlines()
    assert gallery[0] == "lat,lon" and len(gallery) == 51  # train:50, drawn once, kept


def test_the_report_names_the_store_and_shows_no_published_rows(trained):
    root, _ = trained
    report = json.loads((root / "run" / "eval" / "report.json").read_text())
    assert report["benchmark"] == "holdout"
    assert report["published"] == []
    md = (root / "run" / "eval" / "report.md").read_text()
    assert "im2gps3k" not in md.lower() and "published" not in md.split("\n", 3)[0]


def test_evaluate_defaults_to_the_recorded_gallery_and_repeats_the_numbers(trained):
    root, _ = trained
    out = root / "again"
    res = runner.invoke(
        app,
        ["evaluate", "--model", str(root / "run"), "--queries", str(root / "holdout"),
         "--no-baselines", "--mode", "top1", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    first = json.loads((root / "run" / "eval" / "report.json").read_text())
    again = json.loads((out / "report.json").read_text())
    assert again["gallery"] == first["gallery"] and again["gallery_size"] == 50
    (before,) = [r["metrics"] for r in first["results"] if r["kind"] == "model"]
    (after,) = [r["metrics"] for r in again["results"] if r["kind"] == "model"]
    acc = [k for k in before if k.startswith("acc@")]
    assert acc and {k: after[k] for k in acc} == {k: before[k] for k in acc}


def test_predict_and_the_python_api_read_photos_through_the_stores_backbone(trained, tmp_path):
    root, spec = trained
    photo = tmp_path / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
    model = str(root / "run" / "model")
    res = runner.invoke(
        app, ["predict", str(photo), "--model", model, "--no-places", "--json", "-"]
    )
    assert res.exit_code == 0, res.output
    from geoalign.models.registry import checkpoint_gallery

    recorded = checkpoint_gallery(model)  # the record names the gallery searched, not "auto"
    assert recorded != "geoclip-100k" and json.loads(res.stdout)["settings"]["gallery"] == recorded
    geo = Geolocator.from_pretrained(str(root / "run"))
    assert geo.backbone is not None and geo.model.backbone_spec == spec
    assert len(geo.gallery) == 50  # the recorded train:50 gallery, not geoclip-100k
    assert geo.predict(str(photo), top_k=1)


def test_a_geosurge_model_trained_from_a_store_records_the_stores_backbone(tiny_clip, tmp_path):  # noqa: F811
    from geoalign.training.geosurge import geosurge_config_from_dict, train_geosurge

    rng = np.random.default_rng(0)
    centers = rng.uniform([-50, -160], [60, 160], size=(6, 2))
    coords = centers[rng.integers(0, 6, 300)] + rng.normal(0, 1.0, (300, 2))
    feats = rng.normal(size=(300, DIM)).astype(np.float32)
    store_arrays(feats, coords, tmp_path / "s", backbone={"spec": tiny_clip, "embed_dim": DIM})
    cfg = geosurge_config_from_dict(
        {
            "method": "geosurge",
            "model": {"visual": "features", "feature_head": "linear", "embed_dim": 8},
            "cells": {"tau_max": [300, 100], "tau_min": 10},
            "data": {"source": "store", "path": str(tmp_path / "s"), "val_fraction": 0.1},
            "optim": {"batch_size": 64, "epochs": 1, "lr": 0.0},
            "trainer": {"out_dir": str(tmp_path / "run"), "progress": False},
        }
    )
    res = train_geosurge(cfg)
    config = json.loads((res.last_dir / "config.json").read_text())
    assert config["backbone"] == tiny_clip and config["geosurge"]["backbone"] == tiny_clip


def _narrow_clip(folder: Path) -> str:
    """A random CLIP like `tiny_clip` but 16-d: a backbone of another width."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    layer = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    text = dict(layer, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
    vision = dict(layer, image_size=32, patch_size=16, projection_dim=16)
    torch.manual_seed(2)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 32, "width": 32},
                "size": {"shortest_edge": 32},
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
                "do_center_crop": True,
            }
        )
    )
    return f"hf:{folder}"


def test_a_backbone_of_another_width_is_refused_in_one_line(trained, tmp_path):
    root, _ = trained
    narrow = _narrow_clip(tmp_path / "narrow")
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    res = runner.invoke(
        app, ["predict", str(photo), "--model", str(root / "run"), "--backbone", narrow]
    )
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "mat1" not in res.output
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "--backbone" in line and "16-d" in line and f"{DIM}-d" in line


def test_reports_are_named_by_their_data_and_published_rows_follow_the_name():
    from geoalign.evaluation.published import published_for
    from geoalign.evaluation.run import queries_benchmark

    assert queries_benchmark("scene-labels:im2gps3k", None) == "im2gps3k"
    assert queries_benchmark("/data/my-photos/", None) == "my-photos"
    assert queries_benchmark("/data/im2gps3k-store", "im2gps3k") == "im2gps3k"  # named by the user
    assert published_for("im2gps3k", ()) and not published_for("my-photos", ())


def test_the_train_table_is_a_result_on_stdout_one_row_per_method(trained):
    root, _ = trained
    stdout = (root / "train-stdout.txt").read_text()
    (row,) = [line for line in stdout.splitlines() if "tiny-store" in line]
    assert len(row.split()) >= 6  # the method and its numbers on one line, not wrapped
    assert "holdout: 30 queries" in stdout


def test_print_table_keeps_long_method_names_on_one_line(capsys):
    import pandas as pd

    from geoalign.cli.quickstart import print_table
    from geoalign.evaluation.report import ACC_KEYS

    name = "GeoCLIP retrained on a long-named store + 16 training neighbours (top1)"
    row = {"method": name, "kind": "model", "median_km": 1234.0, **dict.fromkeys(ACC_KEYS, 12.5)}
    print_table(pd.DataFrame([row]), "custom: 3 queries")
    captured = capsys.readouterr()
    assert name in captured.out and "12.5" in captured.out.split(name)[1].splitlines()[0]
    assert name not in captured.err


@pytest.mark.parametrize(
    "extra,says",
    [
        (["--within", "AQ"], "Antarctica (AQ) contains no candidate"),  # no gallery point there
        (["--gallery", "<empty>"], "holds no coordinates"),  # header only: no prior involved
    ],
)
def test_nothing_to_rank_is_a_one_line_error_that_names_the_cause(trained, tmp_path, extra, says):
    root, _ = trained
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    empty = tmp_path / "empty.csv"
    empty.write_text("lat,lon\n")
    args = [str(empty) if a == "<empty>" else a for a in extra]
    res = runner.invoke(
        app, ["predict", str(photo), "--model", str(root / "run"), "--no-places", *args]
    )
    assert res.exit_code in (1, 2), res.output
    assert "Traceback" not in res.output and says in res.output, res.output
    if "--gallery" in extra:
        assert "prior" not in res.output


def test_both_exports_of_a_run_remember_the_evaluation(trained, tmp_path):
    """GeoSURGE exports best/ and last/; `--model RUN` may pick either, so both get the record."""
    import shutil
    from types import SimpleNamespace

    from geoalign.evaluation.run import remember_evaluation
    from geoalign.models.registry import checkpoint_gallery

    root, _ = trained
    for name in ("best", "last"):
        shutil.copytree(root / "run" / "model", tmp_path / "run" / name)
        (tmp_path / "run" / name / "gallery.csv").unlink()
    truth = np.array([[10.0, 20.0], [30.0, 40.0], [-5.0, 5.0]])
    used = remember_evaluation(
        tmp_path / "run" / "best", "train:2", SimpleNamespace(truth=truth), "mine", 0
    )
    assert used == str(tmp_path / "run" / "best" / "gallery.csv")
    for name in ("best", "last"):
        folder = tmp_path / "run" / name
        config = json.loads((folder / "config.json").read_text())
        assert config["benchmark"] == "mine" and config["gallery"] == "gallery.csv"
        assert checkpoint_gallery(folder) == str(folder / "gallery.csv")
        assert len((folder / "gallery.csv").read_text().splitlines()) == 3  # header + 2
