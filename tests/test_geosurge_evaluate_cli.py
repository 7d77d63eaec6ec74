"""`geoalign evaluate --manifest/--images` on GeoSURGE checkpoints whose backbone block trains
(`visual: backbone`, `fusion`): trained tiny from photos, evaluated through the model's own
image side (ten-crop; fusion maps from the segmenter the checkpoint records)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from _geosurge import tiny_clip_dir
from geoalign.cli import app
from geoalign.training.geosurge import geosurge_config_from_dict, train_geosurge

__all__ = ["tiny_clip_dir"]  # a shared fixture (tests/_geosurge.py)

runner = CliRunner()
FUSION = {"token_dim": 8, "attention_dim": 16, "num_heads": 2, "latent_dim": 4, "mlp_dim": 16}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 random photos around 6 places: train.csv (all) and test.csv (the first 5)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    centers = rng.uniform([-50, -160], [60, 160], size=(6, 2))
    lines = []
    for i in range(24):
        lat, lon = centers[i % 6] + rng.normal(0, 1.0, 2)
        Image.fromarray(rng.integers(0, 255, (32, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{lat:.5f},{lon:.5f}")
    (root / "train.csv").write_text("image,lat,lon\n" + "\n".join(lines) + "\n")
    (root / "test.csv").write_text("image,lat,lon\n" + "\n".join(lines[:5]) + "\n")
    return root


def _train(visual, out, photos, clip_dir):
    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import extract_segmentations
    from geoalign.nn.backbones import load_backbone

    model = {"visual": visual, "backbone": f"hf:{clip_dir}", "embed_dim": 16}
    data = {"source": "images", "path": str(photos / "train.csv"), "val_fraction": 0.2}
    if visual == "fusion":
        from test_geosurge_train import tiny_segformer

        torch.manual_seed(0)
        segmenter = tiny_segformer()
        seg_dir = out / "segmenter"
        segmenter.model.save_pretrained(seg_dir)
        extract_segmentations(
            load_manifest(photos / "train.csv").clean(),
            segmenter,
            out / "segs",
            preprocess=load_backbone(f"hf:{clip_dir}").preprocess,
            segmenter_info={"spec": f"hf:{seg_dir}"},
            progress=False,
        )
        model |= {
            "fusion_blocks": 1,
            "fusion": FUSION,
            "segmenter": f"hf:{seg_dir}",
            "feature_head": "identity",
        }
        data["segmentations"] = str(out / "segs")
    cfg = geosurge_config_from_dict(
        {
            "method": "geosurge",
            "name": f"tiny-{visual}",
            "model": model,
            "cells": {"tau_max": [12, 4], "tau_min": 1},
            "data": {"num_workers": 0, **data},
            "optim": {"batch_size": 8, "epochs": 1, "lr": 1e-3, "patience": 1},
            "trainer": {"out_dir": str(out / "run"), "progress": False, "accelerator": "cpu"},
            "eval": {"after_training": False},
        }
    )
    return train_geosurge(cfg).last_dir


@pytest.mark.parametrize("visual", ["backbone", "fusion"])
def test_evaluate_photos_of_a_trained_block_checkpoint(visual, photos, tiny_clip_dir, tmp_path):
    model = _train(visual, tmp_path, photos, tiny_clip_dir)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model), "--manifest", str(photos / "test.csv")]
    args += ["--ten-crop", "--mode", "top1", "--mode", "mode", "--out", str(out)]
    result = runner.invoke(app, [*args, "--prior-radius-km", "2500", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file()
    report = json.loads((out / "report.json").read_text())
    rows = [r for r in report["results"] if r["kind"] == "model"]
    assert len(rows) == 4  # top-1 cell, mode, and both within the 2500 km prior
    assert all(r["metrics"]["n"] == 5 for r in rows)
    assert report["meta"]["ten_crop"] is True and "image side" in report["meta"]["features"]
    # what the photo route cannot do is refused by name, before any photo is read
    bad = runner.invoke(app, [*args, "--train", str(photos / "train.csv")])
    assert bad.exit_code == 2 and "--train" in bad.output
