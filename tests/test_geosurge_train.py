"""GeoSURGE training: configs, the Lightning run (features and photos + fusion), early stopping,
resume, export, and `geoalign predict --model <run>/last`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from _geosurge import tiny_clip_dir
from geoalign.cli import app
from geoalign.errors import DataError
from geoalign.training.config import config_method
from geoalign.training.geosurge import (
    geosurge_config_from_dict,
    load_geosurge_config,
    train_geosurge,
)

__all__ = ["tiny_clip_dir"]  # a shared fixture (tests/_geosurge.py)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "geosurge"
runner = CliRunner()


def tiny_segformer():
    """A SegFormer with 150 ADE20K classes and tiny widths (random weights)."""
    from transformers import SegformerConfig

    from geoalign.nn.segmenters import Segmenter

    cfg = SegformerConfig(
        num_labels=150,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
    )
    return Segmenter.from_config(cfg, input_size=32)


def test_every_config_loads_and_names_what_it_reproduces():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 13
    seen = {}
    for path in files:
        cfg = load_geosurge_config(path)
        assert config_method(path) == "geosurge" and cfg.reproduces
        seen[path.stem] = cfg
    assert seen["mp16"].visual == "fusion" and seen["mp16"].accumulate == 8
    assert seen["mp16"].optim.lr == 1e-4 and seen["mp16"].optim.gamma == 0.5
    for depth in (1, 3, 5, 7):
        cfg = seen[f"table7_depth{depth}"]
        assert len(cfg.cells.tau_max) == depth and cfg.cells.tau_max[-1] == 500
        assert "Table VII" in cfg.reproduces
    for blocks in (0, 1, 2, 3):
        cfg = seen[f"table8_fusion{blocks}"]
        assert cfg.model.fusion_blocks == blocks and "Table VIII" in cfg.reproduces
        assert cfg.visual == ("backbone" if blocks == 0 else "fusion")
    assert seen["table6_classifier"].model.objective == "classifier"
    assert "Table VI," in seen["table6_embeddings"].reproduces


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: geosurge\nmodel: {fusion_blocs: 2}\n")
    with pytest.raises(DataError, match="fusion_blocs"):
        load_geosurge_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(DataError, match="loops"):
        load_geosurge_config(loop)
    cfg = load_geosurge_config(CONFIGS / "mp16.yaml", overrides=["optim.micro_batch_size=96"])
    with pytest.raises(DataError, match="not a multiple"):
        _ = cfg.accumulate


def _points(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform([-50, -160], [60, 160], size=(12, 2))
    which = rng.integers(0, 12, n)
    return centers[which] + rng.normal(0, 1.0, (n, 2)), which


def _config(out, **sections):
    base = {
        "method": "geosurge",
        "name": "t",
        "model": {"visual": "features", "feature_head": "linear", "embed_dim": 16},
        "cells": {"tau_max": [300, 100], "tau_min": 10},
        "data": {"source": "arrays", "val_fraction": 0.1, "num_workers": 0},
        "optim": {"batch_size": 128, "epochs": 5, "lr": 0.0, "patience": 1},
        "trainer": {
            "out_dir": str(out),
            "progress": False,
            "accelerator": "cpu",
            "log_every_n_steps": 1,
        },
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value}
    return geosurge_config_from_dict(base)


def test_train_from_features_stops_early_exports_and_predicts(tmp_path, tiny_clip_dir):
    pts, which = _points(1200)
    feats = np.eye(16)[which % 16].astype(np.float32)
    cfg = _config(
        tmp_path / "run",
        model={"backbone": f"hf:{tiny_clip_dir}"},
        optim={"micro_batch_size": 64},
    )
    res = train_geosurge(cfg, arrays=(feats, pts))
    # lr 0: the metric never improves after epoch 0, so patience 1 stops after 2 epochs
    assert [h["epoch"] for h in res.history] == [0, 1]
    assert res.global_step == 2 * (1080 // 128)  # optimizer steps (2 micro-batches each)
    assert res.best == res.history[0]["val/geoscore"]
    config = json.loads((res.last_dir / "config.json").read_text())
    assert (
        config["method"] == "geosurge"
        and config["geosurge"]["level_sizes"] == res.model.hierarchy.sizes
    )
    assert (res.best_dir / "cells" / "hierarchy.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # `geoalign predict --model <run>/last` reads the recorded backbone (backbone: auto)
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
        photo
    )
    out = tmp_path / "pred.jsonl"
    result = runner.invoke(
        app,
        [
            "predict",
            str(photo),
            "--model",
            str(res.last_dir),
            "--json",
            str(out),
            "-k",
            "2",
            "--no-places",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["predictions"]) == 2 and record["predictions"][0]["prob"] > 0


@pytest.mark.slow
def test_train_from_photos_with_fusion_and_resume(tmp_path, tiny_clip_dir):
    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import extract_segmentations
    from geoalign.inference.locator import Geolocator
    from geoalign.models.geosurge import GeoSurge
    from geoalign.nn.backbones import load_backbone

    pts, _ = _points(107, seed=1)
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    lines = []
    for i, (lat, lon) in enumerate(pts):
        Image.fromarray(rng.integers(0, 255, (32, 36, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
        lines.append(f"img/{i}.png,{lat},{lon}")
    manifest_path = tmp_path / "train.csv"
    manifest_path.write_text("image,lat,lon\n" + "\n".join(lines) + "\n")
    torch.manual_seed(0)
    segmenter = tiny_segformer()
    seg_dir = tmp_path / "segmenter"
    segmenter.model.save_pretrained(seg_dir)
    seg_spec = f"hf:{seg_dir}"
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    extract_segmentations(
        load_manifest(manifest_path).clean(),
        segmenter,
        tmp_path / "segs",
        preprocess=backbone.preprocess,
        segmenter_info={"spec": seg_spec},
        progress=False,
    )
    fusion = {"token_dim": 8, "attention_dim": 16, "num_heads": 2, "latent_dim": 4, "mlp_dim": 16}
    cfg = _config(
        tmp_path / "run",
        model={
            "visual": "fusion",
            "backbone": f"hf:{tiny_clip_dir}",
            "fusion_blocks": 1,
            "fusion": fusion,
            "segmenter": seg_spec,
            "feature_head": "identity",
        },
        cells={"tau_max": [40, 20], "tau_min": 5},
        data={
            "source": "images",
            "path": str(manifest_path),
            "segmentations": str(tmp_path / "segs"),
        },
        optim={"batch_size": 32, "micro_batch_size": 16, "epochs": 1, "lr": 1e-3, "patience": 4},
    )
    res = train_geosurge(cfg)
    first = res.global_step
    assert first == 3  # 96 training rows -> 3 batches of 32, 2 micro-batches each
    pretrained = load_backbone(f"hf:{tiny_clip_dir}")
    trained = dict(res.model.backbone.named_parameters())
    for name, p in pretrained.named_parameters():
        changed = not torch.equal(p, trained[name].detach())
        assert changed == ("encoder.layers.1." in name), name  # only the last block trains
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("encoder.layers.0." in k for k in ckpt["state_dict"])  # frozen part omitted
    # resume: one more epoch continues from last.ckpt
    res2 = train_geosurge(load_geosurge_config_from(cfg, epochs=2))
    assert res2.global_step == 2 * first
    model = GeoSurge.load(res2.last_dir)
    locator = Geolocator(model, segmenter=segmenter)
    preds = locator.predict([tmp_path / "img" / "0.png"], top_k=3)
    assert preds[0].ok and len(preds[0].candidates) == 3
    # the CLI loads backbone and segmenter from the specs the checkpoint records
    out = tmp_path / "pred.jsonl"
    args = ["predict", str(tmp_path / "img" / "0.png"), "--model", str(res2.last_dir)]
    result = runner.invoke(app, [*args, "--json", str(out), "-k", "3", "--no-places", "--ten-crop"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["predictions"]) == 3


def load_geosurge_config_from(cfg, epochs):
    data = cfg.to_dict()
    data["optim"]["epochs"] = epochs
    return geosurge_config_from_dict(data)


def test_bad_data_combinations_are_explained(tmp_path):
    cfg = _config(tmp_path, model={"visual": "fusion"})
    with pytest.raises(DataError, match="holds precomputed features"):
        train_geosurge(cfg, arrays=(np.zeros((10, 4)), np.zeros((10, 2))))
    cfg = _config(
        tmp_path,
        model={"visual": "fusion"},
        data={"source": "images", "path": str(tmp_path / "m.csv")},
    )
    with pytest.raises(DataError, match="manifest not found"):
        train_geosurge(cfg)


@pytest.mark.slow
def test_scene_labels_real_data_beats_the_prior(tmp_path):
    """Real data: YFCC26k Places365 scene labels -> location, tested on Im2GPS3k."""
    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.geo.distance import haversine_km
    from geoalign.geo.metrics import summarize_errors
    from geoalign.inference.locator import Geolocator

    cfg = load_geosurge_config(
        CONFIGS / "scene_labels.yaml",
        overrides=[f"trainer.out_dir={tmp_path / 'run'}", "trainer.progress=false"],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: a second thread on a busy 2-core CI is ~10x slower
    try:
        res = train_geosurge(cfg)
    finally:
        torch.set_num_threads(threads)
    feats, coords, _ = load_scene_label_set("im2gps3k")
    locator = Geolocator(res.model)
    cands = locator.predict_features(torch.from_numpy(feats), top_k=1)
    pred = np.array([[c[0].lat, c[0].lon] for c in cands])
    ours = summarize_errors(haversine_km(pred[:, 0], pred[:, 1], coords[:, 0], coords[:, 1]))
    fine = res.model.hierarchy.partitions[-1]
    top = int(np.argmax(fine.counts))
    prior = summarize_errors(
        haversine_km(fine.lat_mean[top], fine.lon_mean[top], coords[:, 0], coords[:, 1])
    )
    print("geosurge", ours, "\nprior", prior, "\nhistory", res.history)
    assert ours["acc@2500km"] > prior["acc@2500km"] + 5
    assert ours["median_km"] < prior["median_km"]


def test_geoalign_train_dispatches_geosurge_configs(tmp_path):
    cfg = tmp_path / "gs.yaml"
    cfg.write_text(
        "base: " + str(CONFIGS / "scene_labels.yaml") + "\n"
        "name: tiny\n"
        "cells: {tau_max: [120, 40], tau_min: 5}\n"
        "data: {path: im2gps, val_fraction: 0.1}\n"
        "optim: {batch_size: 64, epochs: 1}\n"
    )
    out = tmp_path / "run"
    res = runner.invoke(
        app, ["train", str(cfg), "--out", str(out), "--set", "trainer.progress=false"]
    )
    assert res.exit_code == 0, res.output
    assert "tiny: reproduces none" in res.output and "1 epochs" in res.output
    assert json.loads((out / "last" / "config.json").read_text())["method"] == "geosurge"


def test_trainer_placement_follows_torchrun(monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy

    from geoalign.training.config import TrainerSection, trainer_placement

    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    one = trainer_placement(TrainerSection(accelerator="cpu"))
    assert (one.accelerator, one.devices, one.num_nodes, one.strategy) == ("cpu", 1, 1, "auto")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "6")
    many = trainer_placement(TrainerSection(accelerator="cpu", devices=8))
    assert (many.devices, many.num_nodes) == (2, 3) and isinstance(many.strategy, DDPStrategy)
    assert many.strategy.process_group_backend == "gloo"
