"""Robust image input: every bad file is made on the fly and must be reported per file with a
reason while the rest of the batch goes on; every odd pixel format must come out as RGB 8-bit."""

from __future__ import annotations

import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from geoalign.data.images import (
    ImageLoadError,
    array_to_pil,
    expand_image_paths,
    expand_inputs,
    iter_image_batches,
    load_image,
    to_rgb,
)
from geoalign.data.transforms import clip_transform
from geoalign.errors import DataError


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG file written by hand, so header fields (size, bit depth) can be anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def save_jpeg(path: Path, size=(64, 48), color=(200, 30, 30), **kwargs) -> Path:
    Image.new("RGB", size, color).save(path, "JPEG", quality=95, **kwargs)
    return path


# ----------------------------------------------------------------------------- bad files


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageLoadError, match="empty file") as info:
        load_image(path)
    assert info.value.path == str(path) and isinstance(info.value, DataError)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format.*these are"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    full = save_jpeg(tmp_path / "full.jpg", size=(256, 256))
    data = full.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_decompression_bomb_header(tmp_path):
    """A PNG header claiming 30000x30000 pixels is refused before any decoding."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(30000, 30000, 8, 0, b"\x00" * 64))
    with pytest.raises(ImageLoadError, match="decompression-bomb") as info:
        load_image(path)
    # Pillow's own guard or ours, depending on Image.MAX_IMAGE_PIXELS, which other code may raise
    assert re.search(r"900,?000,?000 pixels", info.value.reason)


def test_custom_pixel_limit(tmp_path):
    path = save_jpeg(tmp_path / "a.jpg", size=(100, 100))
    with pytest.raises(
        ImageLoadError, match=r"100x100 = 10,000 pixels is above the limit of 5,000"
    ):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=None).size == (100, 100)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_error_pickles_for_worker_processes():
    err = pickle.loads(pickle.dumps(ImageLoadError("/x/y.jpg", "truncated image data")))
    assert (err.path, err.reason, str(err)) == (
        "/x/y.jpg",
        "truncated image data",
        "/x/y.jpg: truncated image data",
    )


# ----------------------------------------------------------------------------- pixel formats


def test_exif_orientation_6_transposes(tmp_path):
    """Orientation 6 means 'rotate 90 degrees clockwise to display': 40x20 stored -> 20x40 shown."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif)
    image = load_image(path)
    assert image.size == (20, 40)
    red, _, blue = image.getpixel((15, 4))  # stored top-left ends up top-right
    assert red > 200 and blue < 60
    assert load_image(Image.open(path)).size == (20, 40)  # also for PIL images opened by the user


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    image = load_image(path)
    assert image.mode == "RGB"
    r, g, b = image.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_cmyk_with_unusable_profile_falls_back(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    image.info["icc_profile"] = srgb  # an RGB profile on CMYK data cannot transform
    assert to_rgb(image).getpixel((0, 0)) == (255, 0, 0)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in (0, 1, 128, 255)]


def test_16bit_rgb_png(tmp_path):
    pixels = np.array([[[65535, 0, 32896], [257, 51400, 0]]], dtype=">u2")  # 2x1 image
    raw = b"\x00" + pixels.tobytes()  # filter byte 0 for the single row
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, raw))
    image = load_image(path)
    assert image.getpixel((0, 0)) == (255, 0, 128)
    assert image.getpixel((1, 0)) == (1, 200, 0)


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 128))
    path = tmp_path / "alpha.png"
    rgba.save(path)
    image = load_image(path)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # fully transparent black -> white
    r, g, b = image.getpixel((1, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    la = Image.new("LA", (1, 1), (0, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (200, 100, 50)


def test_grayscale_and_bilevel():
    assert to_rgb(Image.new("L", (1, 1), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (1, 1), 1)).getpixel((0, 0)) == (255, 255, 255)


# ----------------------------------------------------------------------------- arrays and tensors


def test_numpy_layouts_and_dtypes():
    hwc = np.zeros((4, 6, 3), np.uint8)
    hwc[..., 0] = 255
    assert load_image(hwc).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(hwc.transpose(2, 0, 1)).size == (6, 4)  # CHW
    assert load_image(np.full((4, 6), 9, np.uint8)).getpixel((5, 3)) == (9, 9, 9)
    assert load_image(np.full((4, 6, 1), 0.5, np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.full((4, 6, 3), 200.0)).getpixel((0, 0)) == (200, 200, 200)
    assert load_image(np.full((2, 2), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.ones((2, 2), bool)).getpixel((0, 0)) == (255, 255, 255)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.full((4, 4, 3), 300.0), "expected"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4, 2), np.uint8), "not HxW"),
        (np.zeros((0, 4), np.uint8), "no pixels"),
        (np.full((4, 4), -3, np.int32), "values span"),
    ],
)
def test_bad_arrays(array, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_image(array)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))))
def test_uint8_rgb_arrays_round_trip(array):
    assert np.array_equal(np.asarray(array_to_pil(array)), array)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 8), st.integers(1, 8))))
def test_uint16_arrays_scale_to_nearest_level(array):
    out = np.asarray(array_to_pil(array))[..., 0].astype(int)
    assert np.all(np.abs(out * 257 - array.astype(int)) <= 128)


def test_uint8_tensor_is_an_image_float_tensor_is_not():
    chw = torch.zeros(3, 5, 7, dtype=torch.uint8)
    chw[1] = 255
    assert load_image(chw).getpixel((0, 0)) == (0, 255, 0)
    with pytest.raises(ImageLoadError, match="preprocessed"):
        load_image(torch.zeros(3, 5, 7))


# ----------------------------------------------------------------------------- folders and batches


def test_folder_expansion(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.jpg", "._b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"x")
    assert [p.name for p in expand_image_paths(tmp_path)] == ["a.png", "b.JPG"]
    assert [p.name for p in expand_image_paths(tmp_path, recursive=True)] == [
        "a.png",
        "b.JPG",
        "c.webp",
    ]
    nested = tmp_path / "nested"
    (nested / "deeper").mkdir(parents=True)
    (nested / "deeper" / "x.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="recursive=True"):
        expand_image_paths(nested)
    assert len(expand_image_paths(nested, recursive=True)) == 1


def test_batches_go_on_past_bad_files(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_jpeg(folder / "01_good.jpg")
    (folder / "02_empty.jpg").touch()
    (folder / "03_text.jpg").write_text("hello")
    Image.new("RGBA", (30, 40), (0, 255, 0, 255)).save(folder / "04_good.png")
    data = save_jpeg(tmp_path / "big.jpg", size=(200, 200)).read_bytes()
    (folder / "05_truncated.jpg").write_bytes(data[:300])
    extra = np.zeros((10, 10, 3), np.uint8)
    preprocessed = torch.randn(3, 32, 32)

    batches = list(
        iter_image_batches([folder, extra, preprocessed], clip_transform(32), batch_size=3)
    )
    assert [len(b) for b in batches] == [1, 2, 1]  # 01 | 04 | array, tensor
    assert batches[0].pixel_values.shape == (1, 3, 32, 32)
    rows = torch.cat([b.pixel_values for b in batches])
    assert rows.shape == (4, 3, 32, 32)
    assert torch.equal(rows[-1], preprocessed)  # float tensors pass through untouched
    indices = [i for b in batches for i in b.indices]
    assert indices == [0, 3, 5, 6]
    errors = {Path(e.path).name: e.reason for b in batches for e in b.errors}
    assert set(errors) == {"02_empty.jpg", "03_text.jpg", "05_truncated.jpg"}
    assert "empty" in errors["02_empty.jpg"] and "truncated" in errors["05_truncated.jpg"]


def test_all_failed_batch_and_shape_mismatch(tmp_path):
    (tmp_path / "a.jpg").touch()
    batch = next(iter_image_batches(tmp_path / "a.jpg", clip_transform(32)))
    assert batch.pixel_values is None and len(batch.errors) == 1
    good = torch.randn(2, 3, 32, 32)
    odd = torch.randn(3, 16, 16)
    batch = next(iter_image_batches([good, odd], clip_transform(32)))
    assert batch.pixel_values.shape == (2, 3, 32, 32) and batch.indices == [0, 1]
    assert "differs" in batch.errors[0].reason and batch.errors[0].path == "<Tensor #1>"


def test_batches_with_worker_process(tmp_path):
    save_jpeg(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("nope")
    batches = list(iter_image_batches(tmp_path, clip_transform(32), num_workers=1))
    assert len(batches) == 1 and len(batches[0]) == 1
    assert batches[0].errors[0].path == str(tmp_path / "b.jpg")


def test_expand_inputs_splits_4d():
    sources = expand_inputs([np.zeros((2, 4, 4, 3), np.uint8), torch.zeros(3, 3, 8, 8)])
    assert [s.name for s in sources] == [
        "<ndarray #0[0]>",
        "<ndarray #0[1]>",
        "<Tensor #1[0]>",
        "<Tensor #1[1]>",
        "<Tensor #1[2]>",
    ]


def test_cli_images_check(tmp_path):
    import json

    from typer.testing import CliRunner

    from geoalign.cli import app

    save_jpeg(tmp_path / "good.jpg")
    (tmp_path / "bad.png").write_text("nope")
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["images", "check", str(tmp_path), "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert "1 of 2 images readable" in result.output
    (failure,) = json.loads(report.read_text())
    assert failure["path"] == str(tmp_path / "bad.png")
    assert "not a recognised image format" in failure["reason"]
    (tmp_path / "bad.png").unlink()
    assert CliRunner().invoke(app, ["images", "check", str(tmp_path)]).exit_code == 0


def test_broken_symlink_is_reported_as_broken_named_or_in_a_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "ok.png")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    assert expand_image_paths(folder) == [folder / "gone.jpg", folder / "ok.png"]
    with pytest.raises(ImageLoadError, match="broken symbolic link.*deleted.jpg does not exist"):
        load_image(folder / "gone.jpg")
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(folder / "never.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    assert folder / "loop.jpg" in expand_image_paths(folder)
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        load_image(folder / "loop.jpg")
