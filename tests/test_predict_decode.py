"""`predict --decode gpu`, checked on the CPU: workers read only JPEG bytes and the main process
decodes them (there on the CPU, injected through `photo_batches(decode_device=...)`), and the
predictions, skipped photos and their reasons equal the default Pillow path's, for a folder and
for webdataset shards, ten-crop too; EXIF orientation as Pillow applies it; usage errors exit 2."""

from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.images import decode_jpeg
from geoalign.data.wds_images import list_photos
from geoalign.errors import DataError
from geoalign.inference import locator
from geoalign.inference.locator import Geolocator
from geoalign.inference.photos import jpeg_orientation, orient, photo_batches
from test_cli_predict import small_gallery, tiny_clip  # noqa: F401  (fixtures)

runner = CliRunner()
BAD = {"junk.jpg", "trunc.jpg"}  # a JPEG whose header Pillow cannot read; one cut short


def _jpeg(seed: int, shape: tuple[int, int], orientation: int = 1) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    image, buf = Image.fromarray(pixels), io.BytesIO()
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (36, 44, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _photos() -> dict[str, bytes]:
    """Plain JPEGs of several sizes, one rotated by EXIF, a PNG (decoded by Pillow on either
    path) and two broken JPEGs."""
    photos = {f"p{i}.jpg": _jpeg(i, (40 + 3 * i, 52)) for i in range(4)}
    photos["rot.jpg"] = _jpeg(7, (40, 60), orientation=6)
    photos["q.png"] = _png(5)
    photos["junk.jpg"] = b"\xff\xd8\xff\xe0 not a JPEG after all"
    whole = _jpeg(9, (48, 48))
    photos["trunc.jpg"] = whole[: len(whole) // 2]  # a readable header: decoded, then refused
    return photos


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "photos"
    out.mkdir()
    for name, data in _photos().items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    """The same photos in two shards, keyed by file stem."""
    items = sorted(_photos().items())
    paths = []
    for k, part in enumerate((items[::2], items[1::2])):
        path = tmp_path / f"{k:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for name, data in part:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def geolocator(tiny_clip, small_gallery) -> Geolocator:  # noqa: F811
    return Geolocator.from_pretrained(
        "geoclip", backbone=f"hf:{tiny_clip}", gallery=str(small_gallery), device="cpu"
    )


@pytest.fixture
def cpu_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode="gpu" decodes on the CPU here: the bytes-then-decode path without a GPU."""
    monkeypatch.setattr(
        locator, "photo_batches", functools.partial(photo_batches, decode_device="cpu")
    )


def _by_source(predictions) -> dict[str, object]:
    return {Path(p.source).name if "/" in p.source else p.source: p for p in predictions}


def _assert_same(plain, raw) -> None:
    """Same sources; same coordinates, probabilities within float rounding; same errors."""
    plain, raw = _by_source(plain), _by_source(raw)
    assert set(raw) == set(plain)
    for name, want in plain.items():
        got = raw[name]
        assert got.error == want.error, name
        assert [(c.lat, c.lon) for c in got.candidates] == [
            (c.lat, c.lon) for c in want.candidates
        ], name
        np.testing.assert_allclose(
            [c.prob for c in got.candidates], [c.prob for c in want.candidates], rtol=1e-5
        )


@pytest.mark.parametrize(("ten_crop", "workers"), [(False, 0), (True, 0), (False, 2)])
def test_folder_bytes_then_decode_equals_the_default_path(
    geolocator, folder, cpu_decode, ten_crop, workers
):
    kwargs = {"top_k": 3, "batch_size": 3, "ten_crop": ten_crop, "num_workers": workers}
    plain = geolocator.predict(folder, **kwargs)
    raw = geolocator.predict(folder, decode="gpu", **kwargs)
    _assert_same(plain, raw)
    assert [p.source for p in raw] == [p.source for p in plain]  # input order kept
    failed = {Path(p.source).name: p.error for p in raw if not p.ok}
    assert set(failed) == BAD  # skipped, named by their path, not a traceback
    assert failed["trunc.jpg"].startswith("truncated image data")


def test_jpegs_reach_the_device_decoder_and_the_rest_do_not(
    geolocator, folder, cpu_decode, monkeypatch
):
    from geoalign.data import images

    decoded = []

    def spy(data: bytes, name: str, *, device="cpu"):
        decoded.append(Path(name).name)
        return decode_jpeg(data, name, device=device)

    monkeypatch.setattr(images, "decode_jpeg", spy)
    geolocator.predict(folder, decode="gpu", top_k=1, batch_size=4)
    assert sorted(decoded) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "rot.jpg", "trunc.jpg"]


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_bytes_then_decode_equals_the_default_path(geolocator, shards, cpu_decode, workers):
    photos = list_photos(shards)
    kwargs = {"top_k": 3, "batch_size": 2, "num_workers": workers}
    plain = geolocator.predict(photos, **kwargs)
    raw = geolocator.predict(photos, decode="gpu", **kwargs)
    _assert_same(plain, raw)
    failed = {p.source: p.error for p in raw if not p.ok}
    assert set(failed) == {"junk", "trunc"}  # keys name the samples
    assert all("(in 00000" in reason for reason in failed.values())  # and their shard


def test_gpu_decode_needs_the_backbone_on_cuda_unless_told_where(geolocator, folder):
    if torch.cuda.is_available():
        pytest.skip("the backbone could be on a GPU here")
    with pytest.raises(DataError, match="backbone is on cpu"):
        photo_batches(
            geolocator.backbone, folder, ten_crop=False, batch_size=2, num_workers=0, decode="gpu"
        )
    with pytest.raises(ValueError, match="decode must be one of cpu, gpu"):
        photo_batches(
            geolocator.backbone,
            folder,
            ten_crop=False,
            batch_size=2,
            num_workers=0,
            decode="nvjpeg",
        )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_pixels_as_pillow_does(orientation):
    data = _jpeg(3, (24, 40), orientation)
    assert jpeg_orientation(data, None) == orientation
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = orient(decode_jpeg(data, "x.jpg"), orientation)
    assert torch.equal(got, torch.from_numpy(want.copy()).permute(2, 0, 1))


def test_what_the_device_should_not_decode_goes_to_the_cpu_path():
    trunc = _photos()["trunc.jpg"]
    assert jpeg_orientation(trunc, None) == 1  # the device is given it, and refuses it
    assert jpeg_orientation(_png(0), None) is None
    assert jpeg_orientation(b"\xff\xd8\xff\xe0 junk", None) is None
    assert jpeg_orientation(_jpeg(0, (40, 40)), max_pixels=1000) is None  # the bomb guard's
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(cmyk, format="JPEG")
    assert jpeg_orientation(cmyk.getvalue(), None) is None


def _args(tiny_clip, small_gallery, *extra):  # noqa: F811
    return ["predict", "--backbone", f"hf:{tiny_clip}", "--gallery", str(small_gallery), *extra]


def test_cli_decode_gpu_needs_device_cuda(tiny_clip, small_gallery, folder):  # noqa: F811
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(folder), "--decode", "gpu"))
    assert res.exit_code == 2
    assert "--device cuda" in res.output and "Traceback" not in res.output


def test_cli_unknown_decode_is_a_usage_error(tiny_clip, small_gallery, folder):  # noqa: F811
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(folder), "--decode", "foo"))
    assert res.exit_code == 2
    assert "--decode must be cpu or gpu" in res.output
