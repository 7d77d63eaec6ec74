"""`data.decode: gpu` when training from photos, checked on the CPU: DataLoader workers read only
the photos' bytes and the process that iterates the batches decodes them and applies the views
transform (there on the CPU, injected through `decode_device="cpu"`). The batches equal the
default Pillow path's (pixels within IDCT rounding, same coordinates, same order) for a manifest
and for webdataset shards; a broken photo stops training with the same message; the config key
is checked."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data import images
from geoalign.data.manifest import load_manifest
from geoalign.data.transforms import MultiView, build_transform, clip_config
from geoalign.data.wds import write_shards
from geoalign.errors import DataError
from geoalign.training import shard_source
from geoalign.training.config import config_from_dict
from geoalign.training.data import ImageSource
from geoalign.training.run import build_source
from geoalign.training.shard_source import ShardImageSource
from test_predict_decode import _jpeg, _png

BATCH = 4
LIMIT = 2500  # the pixel limit of the broken-photo test: above the good photos it uses
LEVELS = 3 / 255 / min(clip_config().std)  # three uint8 levels after CLIP normalisation


def _good() -> dict[str, bytes]:
    """JPEGs of several sizes, one turned by EXIF, a grayscale and a CMYK JPEG, a PNG."""
    photos = {f"p{i}.jpg": _jpeg(i, (40 + 3 * i, 52)) for i in range(4)}
    photos["rot.jpg"] = _jpeg(7, (40, 60), orientation=6)
    gray, cmyk = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (44, 50), np.uint8)).save(
        gray, format="JPEG"
    )
    Image.new("CMYK", (48, 40), (0, 50, 100, 0)).save(cmyk, format="JPEG")
    photos["gray.jpg"], photos["cmyk.jpg"] = gray.getvalue(), cmyk.getvalue()
    photos["q.png"] = _png(5)
    return photos


def _bad() -> dict[str, bytes]:
    """A JPEG whose header Pillow cannot read and one past the pixel limit (the CPU path
    decodes them), and one cut short (the device is given it, refuses it, and the CPU path words
    the error)."""
    whole = _jpeg(9, (48, 48))
    return {
        "junk.jpg": b"\xff\xd8\xff\xe0 not a JPEG after all",
        "trunc.jpg": whole[:900],
        "big.jpg": _jpeg(10, (60, 60)),  # 3,600 pixels: above LIMIT
    }


def _manifest(folder: Path, photos: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, data) in enumerate(photos.items()):
        (folder / name).write_bytes(data)
        rows.append({"image": name, "lat": -40.0 + 10 * i, "lon": 5.0 * i})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return load_manifest(folder / "manifest.csv", check_files=True).clean()


def _views():
    """A deterministic views transform (no random augmentation): P = 2 identical CLIP crops."""
    return MultiView(build_transform(clip_config(32)), 2)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The photos the device decoder is given, in this (the main) process."""
    names: list[str] = []
    real = images.decode_jpeg

    def spy(data: bytes, name: str, *, device="cpu"):
        names.append(Path(name.split("#")[-1]).name)
        return real(data, name, device=device)

    monkeypatch.setattr(images, "decode_jpeg", spy)
    return names


def _batches(src, **where) -> list[dict[str, torch.Tensor]]:
    where = {"epoch": 0, "seed": 3, "rank": 0, "world": 1, "skip": 0} | where
    return list(src.iter_local_batches(batch_size=BATCH, **where))


def _assert_same_batches(plain, raw) -> None:
    assert len(raw) == len(plain) > 0
    for want, got in zip(plain, raw, strict=True):
        assert torch.equal(got["coords"], want["coords"])  # same photos, same order
        assert got["pixels"].shape == want["pixels"].shape == (len(want["coords"]), 2, 3, 32, 32)
        torch.testing.assert_close(got["pixels"], want["pixels"], rtol=0, atol=LEVELS)


def _shards(folder: Path, photos: dict[str, bytes]) -> str:
    write_shards(_manifest(folder, photos), folder / "wds", shard_size=3)
    return str(folder / "wds")


# --- (1) the same batches -------------------------------------------------------------------------


@pytest.mark.parametrize("where", [{}, {"epoch": 1, "rank": 1, "world": 2}])
def test_manifest_bytes_then_decode_gives_the_default_batches(tmp_path, decoded, where):
    manifest = _manifest(tmp_path, _good())
    plain = _batches(ImageSource(manifest, _views(), num_workers=0), **where)
    device = ImageSource(manifest, _views(), num_workers=2, decode_device="cpu")
    _assert_same_batches(plain, _batches(device, **where))
    # JPEGs the device can decode as Pillow does reach it, in this process; CMYK and PNG do not
    assert decoded and set(decoded) <= {
        "p0.jpg",
        "p1.jpg",
        "p2.jpg",
        "p3.jpg",
        "rot.jpg",
        "gray.jpg",
    }


def test_shard_bytes_then_decode_gives_the_default_batches(tmp_path, decoded):
    shards = _shards(tmp_path, _good())
    plain = ShardImageSource(shards, _views(), num_workers=0, cache_dir=tmp_path / "list")
    device = ShardImageSource(
        shards, _views(), num_workers=2, cache_dir=tmp_path / "list", decode_device="cpu"
    )
    _assert_same_batches(_batches(plain), _batches(device))
    assert len(decoded) == 6  # every JPEG but the CMYK one, by the device decoder here


# --- (2) the same error ---------------------------------------------------------------------------


def _message(make_source) -> str:
    with pytest.raises(DataError) as err:
        _batches(make_source())
    return str(err.value)


@pytest.mark.parametrize("bad", sorted(_bad()))
def test_a_broken_photo_stops_training_with_the_same_message(tmp_path, decoded, bad, monkeypatch):
    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", LIMIT)  # read by ImageSource
    monkeypatch.setattr(shard_source, "DEFAULT_MAX_PIXELS", LIMIT)
    photos = dict(list(_good().items())[: BATCH - 1]) | {bad: _bad()[bad]}  # one batch: all
    manifest = _manifest(tmp_path / "m", photos)
    plain = _message(lambda: ImageSource(manifest, _views(), num_workers=0))
    device = _message(lambda: ImageSource(manifest, _views(), decode_device="cpu"))
    assert device == plain and plain.startswith(str(tmp_path / "m" / bad))
    shards = _shards(tmp_path / "s", photos)
    cache = tmp_path / "list"
    plain = _message(lambda: ShardImageSource(shards, _views(), num_workers=0, cache_dir=cache))
    device = _message(
        lambda: ShardImageSource(shards, _views(), cache_dir=cache, decode_device="cpu")
    )
    assert device == plain and plain.endswith("; remove the sample or rewrite the shard")
    assert plain.startswith(f"{Path(shards) / '000001.tar'}#000000004: ")  # shard and key
    tried = bad == "trunc.jpg"  # the device is given it, refuses it: then the CPU path's words
    assert (bad in decoded) == tried and ("000000004" in decoded) == tried


# --- (3) the config key ---------------------------------------------------------------------------


def _photo_config(tmp_path: Path, **data) -> dict:
    data = {"source": "images", "path": str(tmp_path / "missing.csv"), **data}
    return {"data": data, "trainer": {"out_dir": str(tmp_path / "run"), "resume": None}}


def test_an_unknown_decode_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.decode: 'foo' is not one of \['cpu', 'gpu'\]"):
        config_from_dict(_photo_config(tmp_path, decode="foo"))
    assert config_from_dict(_photo_config(tmp_path)).data.decode == "cpu"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_photo_config(tmp_path, decode="foo")))
    res = CliRunner().invoke(app, ["train", str(path)])
    assert res.exit_code == 2 and "data.decode" in res.output and "Traceback" not in res.output


def test_gpu_decode_needs_training_on_cuda(tmp_path, monkeypatch):
    cpu = config_from_dict(
        _photo_config(tmp_path, decode="gpu"), overrides=["trainer.accelerator=cpu"]
    )
    with pytest.raises(DataError, match=r"^data\.decode: 'gpu' .* trainer\.accelerator is 'cpu'"):
        build_source(cpu)  # refused before the manifest or the backbone is read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = config_from_dict(_photo_config(tmp_path, decode="gpu"))
    with pytest.raises(DataError, match=r"^data\.decode: 'gpu' .* no CUDA GPU is visible here"):
        build_source(auto)
    store = config_from_dict({"data": {"source": "store", "path": "x", "decode": "gpu"}})
    with pytest.raises(DataError, match=r"^data\.decode: 'gpu' decodes photos"):
        build_source(store)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_photo_config(tmp_path, decode="gpu")))
    res = CliRunner().invoke(app, ["train", str(path), "--set", "trainer.accelerator=cpu"])
    assert res.exit_code == 2 and "data.decode: 'gpu'" in res.output, res.output


def test_the_simclr_views_transform_takes_the_decoded_tensor_as_it_takes_the_image():
    """The device path hands the views transform a uint8 [3, H, W] tensor, the CPU path a PIL
    image: the same views for the same random draws (the transform turns images into tensors
    first, and every step is a torchvision v2 tensor op)."""
    from geoalign.data.transforms import simclr_views_for

    views = simclr_views_for(clip_config(32), 3)
    image = Image.open(io.BytesIO(_jpeg(4, (50, 40)))).convert("RGB")
    torch.manual_seed(1)
    want = views(image)
    torch.manual_seed(1)
    got = views(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    assert got.shape == (3, 3, 32, 32) and torch.equal(got, want)
