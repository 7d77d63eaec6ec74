"""Training GeoCLIP from webdataset shards of photos (`data.source: wds`): a 2-step run from a
config, the epoch order a pure function of (seed, epoch) whatever the processes and workers, an
exact resume by skipped batches, and config errors that name data.path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.manifest import load_manifest
from geoalign.data.wds import write_shards
from geoalign.errors import DataError
from geoalign.training import shard_source
from geoalign.training.config import config_from_dict
from geoalign.training.run import build_source, train
from geoalign.training.shard_source import ShardImageSource, epoch_order

N = 14


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=24,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> Path:
    """N photos of two colours (two places) as 4 shards of at most 4 samples."""
    folder = tmp_path_factory.mktemp("photos")
    rows = []
    for i in range(N):
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.new("RGB", (40, 36 + i), colour).save(folder / f"{i}.jpg")
        lat, lon = (48.85, 2.35) if i % 2 else (-33.87, 151.21)
        rows.append({"image": f"{i}.jpg", "lat": lat + i / 100, "lon": lon})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    manifest = load_manifest(folder / "manifest.csv", check_files=True).clean()
    write_shards(manifest, folder / "wds", shard_size=4)
    return folder / "wds"


def _config(tiny_clip: Path, path: str | None, out: Path, **data) -> dict:
    return {
        "model": {
            "init": "scratch",
            "queue_size": 8,
            "location_encoder": {
                "n_frequencies": 8,
                "hidden_dim": 16,
                "n_hidden": 1,
                "embed_dim": 8,
            },
            "image_head": {"hidden_dim": 16, "out_dim": 8},
        },
        "data": {
            "source": "wds",
            "path": path,
            "backbone": f"hf:{tiny_clip}",
            "views": 2,
            "num_workers": 0,
            **data,
        },
        "optim": {"lr": 1e-2, "batch_size": 4, "epochs": 1, "max_steps": 2},
        "trainer": {"out_dir": str(out), "resume": None, "progress": False, "log_every_n_steps": 1},
        "eval": {"after_training": False},
    }


def test_two_step_training_from_shards(tiny_clip, wds, tmp_path):
    import lightning as L

    seen = []

    class Peek(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((tuple(batch["pixels"].shape), batch["coords"].clone()))

    cfg = config_from_dict(_config(tiny_clip, str(wds / "{000000..000003}.tar"), tmp_path / "run"))
    result = train(cfg, extra_callbacks=[Peek()])
    assert result.global_step == 2 and result.n_rows == N
    assert [shape for shape, _ in seen] == [(4, 2, 3, 32, 32)] * 2  # P = 2 views per photo
    assert result.model.config.image_head.in_dim == 24
    truth = {
        (round(48.85 + i / 100, 4), 2.35) if i % 2 else (round(-33.87 + i / 100, 4), 151.21)
        for i in range(N)
    }
    for _, coords in seen:  # each batch's coordinates are its photos' own, from their json
        assert {(round(float(a), 4), round(float(b), 4)) for a, b in coords.tolist()} <= truth
    assert (tmp_path / "run" / ".wds-listing").is_dir()  # listed once, kept for a resume
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def _key_of_colour(view: Image.Image) -> torch.Tensor:
    """A 'view' that identifies its photo: its height (the photos differ in height)."""
    return torch.tensor([float(view.size[1])])


def _rows(src: ShardImageSource, **kwargs) -> list[list[float]]:
    return [b["pixels"].flatten().tolist() for b in src.iter_local_batches(batch_size=4, **kwargs)]


def test_epoch_order_is_the_same_for_any_processes_workers_and_resume(wds):
    src = ShardImageSource(str(wds), _key_of_colour, num_workers=0)
    one = _rows(src, epoch=0, seed=3, rank=0, world=1, skip=0)
    assert len(one) == N // 4 and len({h for b in one for h in b}) == 4 * (N // 4)  # no repeats
    halves = [_rows(src, epoch=0, seed=3, rank=r, world=2, skip=0) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == one  # 2 processes see the same rows
    workers = ShardImageSource(str(wds), _key_of_colour, num_workers=2)
    assert _rows(workers, epoch=0, seed=3, rank=0, world=1, skip=0) == one
    assert _rows(src, epoch=0, seed=3, rank=0, world=1, skip=1) == one[1:]  # exact resume
    assert _rows(src, epoch=1, seed=3, rank=0, world=1, skip=0) != one  # a new epoch reshuffles
    for batch in workers.iter_local_batches(0, 4, 3, 0, 1, 0):  # each photo with its own lat/lon
        pairs = zip(batch["pixels"].flatten().tolist(), batch["coords"].tolist(), strict=True)
        for height, (lat, lon) in pairs:
            i = int(height) - 36
            want = (48.85 + i / 100, 2.35) if i % 2 else (-33.87 + i / 100, 151.21)
            assert (lat, lon) == pytest.approx(want, abs=1e-4)


def test_the_shuffle_buffer_mixes_shards_and_keeps_every_row(wds, monkeypatch):
    src = ShardImageSource(str(wds), _key_of_colour, num_workers=0)
    monkeypatch.setattr(shard_source, "SHUFFLE_BUFFER", 3)
    orders = [epoch_order(src.listing, src.rows, seed=0, epoch=e) for e in range(4)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(N))
    assert len({tuple(o.tolist()) for o in orders}) == 4
    shards = [[src.listing.refs[i].url for i in o[:4]] for o in orders]
    assert any(len(set(s)) > 1 for s in shards)  # a batch draws on more than one shard


def test_config_errors_name_data_path(tiny_clip, wds, tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: the shards are required"):
        build_source(config_from_dict(_config(tiny_clip, None, tmp_path / "a")))
    missing = str(wds / "{000000..000007}.tar")
    with pytest.raises(DataError, match=r"^data\.path: .*000004\.tar: shard not found"):
        build_source(config_from_dict(_config(tiny_clip, missing, tmp_path / "b")))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_clip, missing, tmp_path / "c")))
    res = CliRunner().invoke(app, ["train", str(config)])
    assert res.exit_code == 2 and "data.path:" in res.output and "Traceback" not in res.output


def test_the_shipped_mp16_wds_config_reads_shards(tmp_path, monkeypatch):
    """`geoalign train configs/geoclip/mp16_wds.yaml`: GeoCLIP as published, from shards; before
    the shards exist it says so, naming data.path, without loading the backbone."""
    from geoalign.training.config import load_config, resolve_config

    cfg = load_config(resolve_config("geoclip/mp16_wds"))
    assert (cfg.data.source, cfg.data.views, cfg.data.gps_noise_m) == ("wds", 2, 150.0)
    monkeypatch.chdir(tmp_path)
    run = ["train", "geoclip/mp16_wds", "--out", str(tmp_path / "run"), "--no-eval"]
    res = CliRunner().invoke(app, run)
    assert res.exit_code == 2 and "data.path: data/mp16-wds/" in res.output, res.output
