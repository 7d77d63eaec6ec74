"""The GeoSURGE part of `geoalign quickstart`: configs/geosurge/scene_labels.yaml on the
quickstart's descriptors, ~10 s on one CPU thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoalign.training import config
from geoalign.training.geosurge.config import GeoSurgeTrainConfig, geosurge_config_from_dict
from geoalign.training.geosurge.run import train_geosurge

QUICKSTART_NAME = "GeoSURGE (geocell hierarchy)"

QUICKSTART_CONFIG = "geosurge/scene_labels.yaml"  # under the packaged configs (geoalign/configs/)


def quickstart_geosurge_config(out_dir: str | Path, *, seed: int = 0) -> GeoSurgeTrainConfig:
    """The packaged geosurge/scene_labels.yaml as the quickstart runs it: the training rows
    passed in (the quickstart has them loaded already), written to `out_dir`, on the CPU, without
    progress bars, and never resuming an old run."""
    path = config.packaged_configs() / QUICKSTART_CONFIG
    data = config.read_config_yaml(path)
    data["data"] = {**data.get("data", {}), "source": "arrays", "path": None}
    data["trainer"] = {
        **data.get("trainer", {}),
        "out_dir": str(out_dir),
        "seed": int(seed),
        "accelerator": "cpu",
        "resume": None,
        "progress": False,
    }
    return geosurge_config_from_dict(data, source=str(path))


def geosurge_quickstart_rows(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    out_dir: str | Path,
    *,
    seed: int = 0,
    modes: tuple[str, ...] | list[str] = ("top1", "mode"),
    radius_km: float = 750.0,
    progress: bool | None = None,
    validation: tuple[Any, Any] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Train GeoSURGE on the training descriptors (the run folder is `out_dir`), evaluate its best
    model on the test ones: (report rows named "GeoSURGE (geocell hierarchy) ...", a summary).

    `progress`: Lightning's progress bar (None: off). Runs on one CPU thread and restores the
    thread count after: the model is an MLP and a few hundred cell embeddings, and on a busy
    2-core machine a second thread made each step ~20x slower (contention), not faster."""
    from geoalign.evaluation.model_rows import model_rows
    from geoalign.models.registry import load_model

    start = time.perf_counter()
    cfg = quickstart_geosurge_config(out_dir, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train_geosurge(cfg, arrays=(train_x, train_y), progress=bool(progress))
        model_dir = res.best_dir if res.best_dir.is_dir() else res.last_dir
        trained = time.perf_counter()
        rows = model_rows(
            load_model(model_dir),
            test_x,
            test_y,
            None,
            QUICKSTART_NAME,
            modes,
            radius_km,
            validation,
        )
    finally:
        torch.set_num_threads(threads)
    done = time.perf_counter()
    sizes = list(res.model.hierarchy.sizes)
    monitor = cfg.optim.monitor
    summary = {
        "model_dir": str(model_dir),
        "cells": sizes,
        "training_rows": res.n_rows,
        "global_step": res.global_step,
        "epochs": res.epochs,
        "best": {monitor: res.best},
        "train_seconds": trained - start,
        "eval_seconds": done - trained,
        "seconds": done - start,
        "training": (
            f"GeoSURGE: {res.n_rows:,} rows, S2 cells {sizes} (coarse to fine), "
            f"{res.global_step} steps of batch {cfg.optim.batch_size} over {res.epochs} epochs "
            f"(best {monitor} {res.best if res.best is None else round(res.best, 3)}), "
            f"{trained - start:.0f} s; model {model_dir}"
        ),
    }
    return rows, summary
