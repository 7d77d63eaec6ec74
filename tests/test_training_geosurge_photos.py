"""GeoSURGE photo training never drops an unreadable photo silently: it is replaced by the next
readable training photo (full batches, the same batch count on every process) and reported."""

import numpy as np
import pytest
from PIL import Image

from _geosurge import tiny_clip_dir
from geoalign.errors import DataError
from geoalign.training.geosurge import geosurge_config_from_dict, train_geosurge
from geoalign.training.geosurge.photos import photo_data

__all__ = ["tiny_clip_dir"]  # a shared fixture (tests/_geosurge.py)


def photos(tmp_path, n, broken):
    """n photos around 4 places; the rows in `broken` are not images (but exist)."""
    rng = np.random.default_rng(0)
    centers = np.array([[48.0, 2.0], [40.0, -74.0], [-33.0, 151.0], [35.0, 139.0]])
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(n):
        lat, lon = centers[i % 4] + rng.normal(0, 0.5, 2)
        path = tmp_path / "img" / f"{i}.png"
        if i in broken:
            path.write_bytes(b"not a photo")
        else:
            Image.fromarray(rng.integers(0, 255, (32, 36, 3), dtype=np.uint8)).save(path)
        lines.append(f"img/{i}.png,{lat},{lon}")
    manifest = tmp_path / "train.csv"
    manifest.write_text("image,lat,lon\n" + "\n".join(lines) + "\n")
    return manifest


def config(tmp_path, manifest, clip):
    return geosurge_config_from_dict(
        {
            "model": {"visual": "backbone", "backbone": f"hf:{clip}", "embed_dim": 16},
            "cells": {"tau_max": [40, 20], "tau_min": 5},
            "data": {
                "source": "images",
                "path": str(manifest),
                "num_workers": 0,
                "val_fraction": 0.2,
            },
            "optim": {"batch_size": 8, "epochs": 1, "lr": 1e-3, "val_batch_size": 8},
            "trainer": {"out_dir": str(tmp_path / "run"), "progress": False, "accelerator": "cpu"},
        }
    )


def test_every_process_gets_full_batches_of_training_rows(tmp_path, tiny_clip_dir, capsys):
    broken = set(range(0, 64, 2))  # half the photos: on the old code whole batches went missing
    data = photo_data(config(tmp_path, photos(tmp_path, 64, broken), tiny_clip_dir))
    train_coords = np.asarray(data.train_coords, dtype=np.float32)
    counts = []
    for rank in (0, 1):
        batches = list(data.train.iter_local_batches(0, 8, 0, rank, 2, 0))
        counts.append(len(batches))
        assert all(b["pixels"].shape[0] == 4 for b in batches)  # 8 over 2 processes
        for b in batches:  # a replacement comes from the training rows, never the held-out ones
            gap = np.abs(b["coords"].numpy()[:, None] - train_coords[None]).sum(-1).min(1)
            assert gap.max() < 1e-4
    assert counts[0] == counts[1] == data.train.n_rows // 8
    err = capsys.readouterr().err
    assert "unreadable photo(s) in training epoch 0, process 0" in err
    assert "replaced by the next readable training photo" in err
    assert ".png (not a recognised image" in err and "; and " in err and " more" in err
    held_out = list(data.val.iter_all(8, 0, 1))
    assert sum(len(b["coords"]) for b in held_out) < data.val.n_rows  # broken ones left out
    assert "in the held-out photos (left out)" in capsys.readouterr().err


def test_training_reports_unreadable_photos_and_keeps_its_step_count(
    tmp_path, tiny_clip_dir, capsys
):
    cfg = config(tmp_path, photos(tmp_path, 40, {3, 17}), tiny_clip_dir)
    res = train_geosurge(cfg)
    assert res.global_step == res.n_rows // 8
    err = capsys.readouterr().err
    assert "unreadable photo(s) in training epoch 0" in err or "held-out" in err
    assert "17.png" in err or "3.png" in err


def test_only_unreadable_photos_is_one_clear_error(tmp_path, tiny_clip_dir):
    data = photo_data(config(tmp_path, photos(tmp_path, 24, set(range(24))), tiny_clip_dir))
    with pytest.raises(DataError, match="training photos in a row cannot be read"):
        next(iter(data.train.iter_local_batches(0, 8, 0, 0, 1, 0)))
