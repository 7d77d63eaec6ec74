"""The GPU fast path, checked on CPU: bf16 autocast close to fp32 and fp32 untouched,
channels-last equal, SDPA attention in use, nvJPEG-style decode close to Pillow, and the
CUDA-only options refusing clearly without a GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from transformers import CLIPVisionConfig

from geoalign.data.images import decode_jpeg, load_image
from geoalign.errors import DataError, GeoalignError
from geoalign.nn.backbones import ClipBackbone
from geoalign.nn.backbones.torchvision_models import TorchvisionBackbone

NO_CUDA = not torch.cuda.is_available()


def _clip() -> ClipBackbone:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=24,
    )
    return ClipBackbone.from_config(config)


def test_bf16_autocast_is_close_to_fp32_and_fp32_stays_bit_identical() -> None:
    backbone = _clip()
    x = torch.randn(4, 3, 32, 32)
    plain = backbone(x)
    again = backbone.configure_inference(precision="fp32")(x)
    assert torch.equal(plain, again)  # the default path is untouched
    out = backbone.configure_inference(precision="bf16").encode(x)
    assert out.pooled.dtype == torch.float32 and out.tokens.dtype == torch.float32
    assert not torch.equal(out.pooled, plain)  # autocast really ran in bf16
    cos = torch.nn.functional.cosine_similarity(out.pooled, plain, dim=-1)
    assert cos.min() > 0.99, cos


def test_clip_attention_runs_through_sdpa() -> None:
    assert _clip().model.config._attn_implementation == "sdpa"


def test_channels_last_conv_net_gives_the_same_features() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    from geoalign.data.transforms import imagenet_config

    backbone = TorchvisionBackbone(net, name="resnet18", preprocess=imagenet_config(64, 72))
    x = torch.randn(2, 3, 64, 64)
    plain = backbone(x)
    fast = backbone.configure_inference(channels_last=True)
    assert fast.channels_last
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), plain, rtol=1e-4, atol=1e-5)


def test_options_that_need_cuda_say_so() -> None:
    backbone = _clip()
    with pytest.raises(GeoalignError, match="fp16 needs a CUDA device"):
        backbone.configure_inference(precision="fp16")
    with pytest.raises(GeoalignError, match="precision must be one of fp32, bf16, fp16"):
        backbone.configure_inference(precision="int8")
    if NO_CUDA:
        with pytest.raises(DataError, match="GPU JPEG decoding needs a CUDA device"):
            decode_jpeg(b"\xff\xd8", "x.jpg", device="cuda")


def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (8, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_tensor_jpeg_decode_matches_pillow_within_rounding() -> None:
    data = _jpeg_bytes()
    tensor = decode_jpeg(data, "a.jpg", device="cpu")
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 64, 96)
    pil = np.asarray(load_image(Image.open(io.BytesIO(data)))).transpose(2, 0, 1)
    diff = np.abs(tensor.numpy().astype(int) - pil.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8
    png = io.BytesIO()
    Image.fromarray(pil.transpose(1, 2, 0)).save(png, format="PNG")
    assert np.array_equal(decode_jpeg(png.getvalue(), "a.png").numpy(), pil)  # Pillow fallback
    with pytest.raises(DataError, match="b.jpg: undecodable JPEG"):
        decode_jpeg(b"\xff\xd8garbage", "b.jpg")


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_gpu_decode_and_bf16_on_cuda() -> None:
    data = _jpeg_bytes()
    on_gpu = decode_jpeg(data, "a.jpg", device="cuda")
    assert on_gpu.is_cuda
    cpu = decode_jpeg(data, "a.jpg")
    assert (on_gpu.cpu().int() - cpu.int()).abs().float().mean() < 1.0
    backbone = _clip().cuda().configure_inference(precision="bf16")
    x = torch.randn(4, 3, 32, 32, device="cuda")
    assert backbone(x).dtype == torch.float32


def test_cli_refuses_gpu_only_options_on_cpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    import geoalign.nn.backbones as backbones
    from geoalign.cli.features import register

    monkeypatch.setattr(backbones, "load_backbone", lambda spec, device: _clip())
    (tmp_path / "m.csv").write_text("image,lat,lon\n")
    app = typer.Typer()
    register(app)
    base = ["features", "extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*base, "--decode", "gpu"])
    assert res.exit_code == 2 and "--decode gpu" in res.output and "--device cuda" in res.output
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,lat,lon\na.png,1,2\n")
    res = CliRunner().invoke(app, [*base, "--precision", "fp16"])
    assert res.exit_code == 2 and "fp16 needs a CUDA device" in res.output
    res = CliRunner().invoke(app, [*base, "--precision", "bf16", "--dtype", "float32"])
    assert res.exit_code == 0, res.output


def _photos(folder, n: int = 3) -> list[str]:
    paths = []
    for i in range(n):
        paths.append(str(folder / f"p{i}.png"))
        pixels = np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_predict_batches_are_pinned_only_for_a_cuda_backbone(tmp_path) -> None:
    from geoalign.data.images import ImageBatch
    from geoalign.inference.photos import photo_batches

    photos = _photos(tmp_path)
    common = dict(ten_crop=False, batch_size=2, num_workers=0)
    _, loader = photo_batches(_clip(), photos, **common)
    assert loader.pin_memory is False  # a CPU backbone: nothing to overlap
    _, loader = photo_batches(_clip(), photos, **common, pin_memory=True)
    assert loader.pin_memory is True
    empty = ImageBatch(pixel_values=None)
    assert empty.pin_memory() is empty  # a batch of failures only: nothing to pin


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_predict_pins_batches_for_a_cuda_backbone(tmp_path) -> None:
    from geoalign.inference.photos import photo_batches

    _, loader = photo_batches(
        _clip().cuda(), _photos(tmp_path), ten_crop=False, batch_size=2, num_workers=0
    )
    assert loader.pin_memory is True
    assert next(iter(loader)).pixel_values.is_pinned()


@pytest.mark.slow
def test_the_gpu_benchmark_dry_run_works() -> None:
    """benchmarks/gpu.py is one command to run when a GPU is lent: its CPU dry run (tiny models,
    every part: batch predict, GeoSURGE fusion step, GeoCLIP training) must not rot."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu.py"
    res = subprocess.run(
        [sys.executable, str(script), "--dry-run"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dry run ok: batch predict" in res.stdout
