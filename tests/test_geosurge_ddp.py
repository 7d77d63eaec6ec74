"""GeoSURGE under DDP: two CPU processes (torchrun, gloo) train what one process trains.

With "batch" negatives each process gathers the labels of the whole global batch, so the cells of
the other process's photos are negatives too; the loss, and so the weights, equal one process on
the same global batches.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Entry point of the training script (run directly or under torchrun)."""
    from geoalign.training.geosurge import geosurge_config_from_dict, train_geosurge

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    centers = rng.uniform([-50, -160], [60, 160], size=(10, 2))
    which = rng.integers(0, 10, 700)
    pts = centers[which] + rng.normal(0, 1.0, (700, 2))
    feats = (np.eye(10)[which] + rng.normal(0, 0.1, (700, 10))).astype(np.float32)
    cfg = geosurge_config_from_dict(
        {
            "method": "geosurge",
            "model": {"visual": "features", "feature_head": "linear", "embed_dim": 8},
            # tau_min 1 keeps every cell: every row has a cell at every level, so each process's
            # per-level mean has the same weight as in one process
            "cells": {"tau_max": [200, 60], "tau_min": 1},
            "data": {"source": "arrays", "val_fraction": 0.1},
            "optim": {"batch_size": 64, "epochs": 2, "lr": 1e-2},
            "trainer": {
                "out_dir": out,
                "progress": False,
                "accelerator": "cpu",
                "devices": int(os.environ.get("DEVICES", "1")),
            },
        }
    )
    train_geosurge(cfg, arrays=(feats, pts))


def _run(tmp_path: Path, out: Path, launcher=None, env=None):
    script = tmp_path / "train_geosurge_tiny.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nfrom test_geosurge_ddp import main\nmain()\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    cmd = [*(launcher or [sys.executable]), str(script), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    one = _run(tmp_path, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(
        tmp_path,
        tmp_path / "two",
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29533"],
        env={"DEVICES": "2", "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    a = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
