"""`features extract --views K --augment simclr`: K seeded SimCLR views per image in a crash-safe,
resumable store; training from it draws P distinct views of each row per step."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.feature_store import FeatureStore, extract_features, merge_parts, store_arrays
from geoalign.data.feature_store_views import simclr_store_views
from geoalign.data.manifest import Manifest
from geoalign.data.transforms import clip_config
from geoalign.errors import DataError
from geoalign.training.data import StoreSource

runner = CliRunner()
N_IMAGES, K = 12, 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Manifest, Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    names = []
    for i in range(N_IMAGES):
        names.append(f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / names[-1])
    frame = pd.DataFrame(  # distinct coordinates: a batch row is found again by its coordinates
        {
            "image": names,
            "lat": np.linspace(-50, 50, N_IMAGES),
            "lon": np.linspace(-150, 150, N_IMAGES),
        }
    )
    frame.to_csv(folder / "photos.csv", index=False)
    manifest = Manifest.from_frame(frame, image_root=folder, source=folder / "photos.csv")
    return manifest, folder / "photos.csv"


def _pool(views: list[torch.Tensor]) -> np.ndarray:
    """A deterministic encoder of prepared views [K, 3, 16, 16] -> [K, 12] (2x2 pooled pixels)."""
    return np.stack(
        [v.reshape(K, 3, 2, 8, 2, 8).mean(dim=(3, 5)).reshape(K, -1).numpy() for v in views]
    )


def _extract(manifest: Manifest, out: Path, encode=_pool, seed: int = 7, **kw) -> FeatureStore:
    views = simclr_store_views(clip_config(16), K, seed)
    kw = {"batch_size": 3, "shard_size": 4, "progress": False, "dtype": "float32"} | kw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_features(
            manifest, encode, out, prepare_fn=views.prepare, views=views.record, **kw
        )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}


def test_the_store_holds_k_seeded_views_per_row(photos, tmp_path):
    manifest, _ = photos
    store = _extract(manifest, tmp_path / "a")
    assert (store.views, store.view_kind) == (K, "simclr")
    assert store.index["views"] == {"count": K, "kind": "simclr", "seed": 7, "image_size": 16}
    feats = store[:]
    assert feats.shape == (N_IMAGES, K, 12) and store[3].shape == (K, 12)
    assert np.abs(feats[:, 1:] - feats[:, :1]).max() > 1e-2  # K different views, not one
    # a rerun makes the same views, whatever the threads; another seed makes others
    _extract(manifest, tmp_path / "b", num_workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other = _extract(manifest, tmp_path / "c", seed=8)
    assert not np.allclose(other[:], feats)


def test_the_views_leave_the_callers_random_state_alone(photos, tmp_path):
    manifest, _ = photos
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _extract(manifest, tmp_path / "s")
    assert torch.equal(torch.rand(3), expected)


def test_an_interrupted_extraction_resumes_to_the_same_bytes(photos, tmp_path):
    manifest, _ = photos
    reference = _extract(manifest, tmp_path / "uninterrupted")
    calls = {"n": 0}

    def dies_in_shard_1(views):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 0 takes 2 batches of 3, 2 rows; the 4th call is in shard 1
            raise RuntimeError("killed")
        return _pool(views)

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        _extract(manifest, out, encode=dies_in_shard_1)
    index = json.loads((out / "index.json").read_text())
    assert [e["shard"] for e in index["shards"]] == [0] and not index["complete"]
    store = _extract(manifest, out)  # the rerun resumes: shard 0 is kept, the rest made
    assert store.complete and _files(out) == _files(tmp_path / "uninterrupted")
    np.testing.assert_array_equal(store[:], reference[:])
    # and two ranks writing parts, then merging, give the same store too
    for rank in (0, 1):
        _extract(manifest, tmp_path / "dist", rank=rank, world_size=2)
    merged = merge_parts(tmp_path / "dist")
    assert merged.views == K and _files(tmp_path / "dist") == _files(out)


def test_a_rerun_with_other_views_is_refused(photos, tmp_path):
    manifest, _ = photos
    _extract(manifest, tmp_path / "s")
    with pytest.raises(DataError, match="views="):
        _extract(manifest, tmp_path / "s", seed=8)


@pytest.fixture(scope="module")
def views_store(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views") / "store"
    _extract(photos[0], out)
    return out


def _row_of(store: FeatureStore, coords: torch.Tensor) -> np.ndarray:
    table = store.coords.astype(np.float32)
    return np.array([int(np.flatnonzero((table == c.numpy()).all(axis=1))[0]) for c in coords])


def test_training_draws_p_distinct_views_of_each_row(views_store):
    store = FeatureStore(views_store)
    every = store[:]
    source = StoreSource(views_store, views=2)
    picked = []
    for epoch in (0, 1):
        for batch in source.iter_local_batches(epoch, 4, seed=0, rank=0, world=1, skip=0):
            assert batch["features"].shape == (4, 2, 12)
            rows = _row_of(store, batch["coords"])
            for feats, row in zip(batch["features"].numpy(), rows, strict=True):
                which = [int(np.flatnonzero((every[row] == f).all(axis=1))[0]) for f in feats]
                assert len(set(which)) == 2  # two distinct stored views of this very row
                picked.append((row, tuple(which)))
    assert len({w for _, w in picked}) > 1  # the pair changes from row to row and epoch to epoch
    # two processes see the halves of the one-process batches (same rows, same views)
    one = list(source.iter_local_batches(0, 4, seed=0, rank=0, world=1, skip=0))
    halves = [
        list(source.iter_local_batches(0, 4, seed=0, rank=r, world=2, skip=0)) for r in (0, 1)
    ]
    for k, batch in enumerate(one):
        both = torch.cat([halves[0][k]["features"], halves[1][k]["features"]])
        assert torch.equal(both, batch["features"])
    # one view per step: [b, D] rows, each one of the row's stored views
    single = next(StoreSource(views_store).iter_local_batches(0, 4, 0, 0, 1, 0))
    assert single["features"].shape == (4, 12)


def test_more_views_than_the_store_holds_are_refused(views_store, tmp_path):
    with pytest.raises(DataError, match="data.views=5.*4 simclr views per image"):
        StoreSource(views_store, views=5)
    rng = np.random.default_rng(0)
    flat = store_arrays(rng.normal(size=(8, 12)).astype("f4"), np.zeros((8, 2)), tmp_path / "flat")
    with pytest.raises(DataError, match="one view per image.*--views K --augment simclr"):
        StoreSource(flat.path, views=2)


def test_two_training_steps_on_a_views_store(views_store, tmp_path):
    cfg = {
        "name": "tiny-views",
        "reproduces": "none (test)",
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
        },  # fmt: skip
        "data": {"source": "store", "path": str(views_store), "views": 2},
        "optim": {"batch_size": 4, "epochs": 1, "max_steps": 2},
        "trainer": {
            "progress": False,
            "out_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "log_every_n_steps": 1,
        },
        "eval": {"after_training": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path)])
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output
    logs = sorted((tmp_path / "run").rglob("metrics*.csv"))
    assert logs, sorted(p.name for p in (tmp_path / "run").rglob("*"))
    log = pd.read_csv(logs[0])
    assert np.isfinite(log["train/loss"].dropna()).all() and len(log["train/loss"].dropna())


def test_the_cli_extracts_a_views_store(photos, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    clip = tmp_path / "clip"
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
            projection_dim=24,
        )
    ).save_pretrained(clip)
    _, csv = photos
    out = tmp_path / "store"
    args = ["features", "extract", str(csv), "--out", str(out), "--backbone", f"hf:{clip}"]
    res = runner.invoke(app, [*args, "--views", "3", "--view-seed", "5"])
    assert res.exit_code == 0, res.output
    assert "3 simclr views each" in res.output
    store = FeatureStore(out)
    assert store[:].shape == (N_IMAGES, 3, 24)
    assert store.index["views"]["seed"] == 5 and store.index["views"]["image_size"] == 32


def test_the_concept_bottleneck_rows_of_a_views_store_are_the_mean_view(views_store):
    from types import SimpleNamespace

    from geoalign.training.concept import _training_rows

    run = SimpleNamespace(
        train=SimpleNamespace(
            data=SimpleNamespace(source="store", path=str(views_store)),
            trainer=SimpleNamespace(seed=0),
        ),
        cbm=SimpleNamespace(rows=100),
    )
    feats, coords = _training_rows(run, None)
    store = FeatureStore(views_store)
    assert feats.shape == (N_IMAGES, 12)
    np.testing.assert_allclose(feats, store[:].mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(coords, store.coords)


def test_geosurge_refuses_a_views_store_clearly(views_store, tmp_path):
    from geoalign.training.geosurge import geosurge_config_from_dict
    from geoalign.training.geosurge.data import build_data

    cfg = geosurge_config_from_dict(
        {
            "method": "geosurge",
            "name": "t",
            "model": {"visual": "features", "feature_head": "linear", "embed_dim": 16},
            "cells": {"tau_max": [300, 100], "tau_min": 10},
            "data": {"source": "store", "path": str(views_store), "val_fraction": 0.25},
            "trainer": {"out_dir": str(tmp_path / "run"), "progress": False},
        }
    )
    with pytest.raises(DataError, match="4 simclr views per image; GeoSURGE trains on one view"):
        build_data(cfg)
