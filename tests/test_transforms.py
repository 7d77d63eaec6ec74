"""Preprocessing against transformers' CLIP processors and torchvision's presets; ten-crop; SimCLR."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from transformers import CLIPImageProcessor
from transformers.models.clip import CLIPImageProcessorPil

from geoalign.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FloorCenterCrop,
    PreprocessConfig,
    SimCLRConfig,
    average_crop_logits,
    build_transform,
    clip_config,
    clip_transform,
    imagenet_config,
    simclr_views,
    simclr_views_for,
    ten_crop_transform,
)

# measured on these images: 4.8e-7 (float rounding); the two resamplers differ by 1 uint8 level
SAME_BACKEND_ATOL = 1e-5
ONE_LEVEL = 1.0 / 255 / min(0.26862954, 0.26130258, 0.27577711) + 1e-4


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (matplotlib's Grace Hopper) as a 1024x768 JPEG round trip."""
    import io

    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize((1024, 768), Image.BICUBIC).save(buffer, "JPEG")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def odd_photo(photo) -> Image.Image:
    """251x224: no resize, and (251 - 224) % 4 == 3 where torchvision's CenterCrop rounds differently."""
    return photo.resize((251, 224), Image.BICUBIC)


@pytest.mark.parametrize("which", ["photo", "odd_photo"])
def test_tensor_backend_matches_clip_image_processor(which, request):
    image = request.getfixturevalue(which)
    ours = clip_transform(224)(image)
    theirs = CLIPImageProcessor()(images=image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max() < SAME_BACKEND_ATOL


@pytest.mark.parametrize("which", ["photo", "odd_photo"])
def test_pil_backend_matches_pil_clip_processor(which, request):
    image = request.getfixturevalue(which)
    ours = clip_transform(224, backend="pil")(image)
    theirs = CLIPImageProcessorPil()(images=image, return_tensors="pt")["pixel_values"][0]
    assert (ours - theirs).abs().max() < SAME_BACKEND_ATOL


def test_backends_differ_by_at_most_one_level(photo):
    tensor = clip_transform(224)(photo)
    pil = clip_transform(224, backend="pil")(photo)
    assert (tensor - pil).abs().max() <= ONE_LEVEL


def test_clip_336(photo):
    ours = clip_transform(336)(photo)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    assert (ours - theirs).abs().max() < SAME_BACKEND_ATOL


def test_uint8_tensor_input_equals_pil_input(photo):
    transform = clip_transform(224)
    assert torch.equal(transform(photo), transform(F.pil_to_tensor(photo)))


def test_floor_center_crop_offsets():
    image = torch.arange(7 * 7).reshape(1, 7, 7)
    crop = FloorCenterCrop(4)(image)  # offset floor(3 / 2) = 1, torchvision rounds to 2
    assert crop[0, 0, 0] == 1 * 7 + 1
    assert F.center_crop(image, [4, 4])[0, 0, 0] == 2 * 7 + 2


def test_imagenet_preset_matches_torchvision(photo):
    from torchvision.models import MobileNet_V2_Weights

    preset = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    ours = build_transform(imagenet_config(224, 256), backend="pil")(photo)
    assert (ours - preset(photo)).abs().max() < SAME_BACKEND_ATOL
    assert imagenet_config().mean == IMAGENET_MEAN and imagenet_config().std == IMAGENET_STD


def test_config_validation():
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="positive"):
        PreprocessConfig(image_size=0)
    with pytest.raises(ValueError, match="backend"):
        build_transform(clip_config(), backend="cv2")


# ----------------------------------------------------------------------------- ten-crop


def test_ten_crop_layout(photo):
    crops = ten_crop_transform(clip_config(224))(photo)
    assert crops.shape == (10, 3, 224, 224)
    resized = F.resize(F.pil_to_tensor(photo), 256, interpolation=F.InterpolationMode.BICUBIC)
    assert resized.shape[-2:] == (256, 341)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    top_left = (resized[:, :224, :224] / 255.0 - mean) / std
    torch.testing.assert_close(crops[0], top_left)
    # centre (index 4) = the single-crop transform at resize 256 (offset 58.5 -> 58 both ways)
    single = build_transform(PreprocessConfig(image_size=224, resize_size=256))(photo)
    torch.testing.assert_close(crops[4], single)
    # the second five are the corners of the mirrored image: mirrored TL = flipped TR, etc.
    for flipped, original in ((5, 1), (6, 0), (7, 3), (8, 2)):
        torch.testing.assert_close(crops[flipped], crops[original].flip(-1))


def test_ten_crop_resize_rules():
    assert ten_crop_transform(clip_config(224)).transforms[1].size == [256]
    assert ten_crop_transform(clip_config(336)).transforms[1].size == [384]
    assert ten_crop_transform(imagenet_config(224, 232)).transforms[1].size == [232]
    with pytest.raises(ValueError, match="smaller"):
        ten_crop_transform(clip_config(224), resize_size=200)


def test_average_crop_logits():
    logits = torch.randn(3, 10, 7)
    expected = logits.mean(1)
    torch.testing.assert_close(average_crop_logits(logits), expected)
    torch.testing.assert_close(average_crop_logits(logits.flatten(0, 1)), expected)
    with pytest.raises(ValueError, match="grouped per image"):
        average_crop_logits(torch.randn(25, 7))


# ----------------------------------------------------------------------------- SimCLR views


def test_simclr_views_shape_randomness_and_reproducibility(photo):
    views = simclr_views(4, 96)
    torch.manual_seed(3)
    a = views(photo)
    torch.manual_seed(3)
    b = views(photo)
    assert a.shape == (4, 3, 96, 96) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 4))


def test_simclr_without_colour_ops_only_crops_and_flips(photo):
    plain = SimCLRConfig(scale=(1.0, 1.0), color_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    square = photo.crop((0, 0, 768, 768))
    views = simclr_views(2, 64, config=plain)(square)
    reference = build_transform(PreprocessConfig(image_size=64))(square)
    assert (views - reference).abs().max() <= ONE_LEVEL  # full-image crop, resized once


def test_simclr_for_backbone_config():
    config = imagenet_config(128, 146)
    views = simclr_views_for(config, 2)
    assert views.n_views == 2
    normalize = views.augment.transforms[-1]
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.mean) != CLIP_MEAN
    out = views(torch.zeros(3, 200, 300, dtype=torch.uint8))
    assert out.shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="n_views"):
        simclr_views(0)
