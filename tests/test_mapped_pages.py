"""A frozen backbone's memory-mapped weights are given back after each module's forward: the
outputs are unchanged, the mapping's resident pages drop, and nothing unsafe is released."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from geoalign.nn.backbones import load_backbone
from geoalign.nn.backbones.mapped_pages import file_mappings, release_pages_after_forward

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _checkpoint(folder) -> None:
    """A CLIP vision tower with ~13 MB of float32 weights, as save_pretrained writes it."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=64,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)


def _resident_kb(folder) -> int:
    """Resident kB of this process's mappings of the checkpoint's weights file."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:
                inside = line.rstrip().endswith(".safetensors") and str(folder) in line
            elif head[0] == "Rss:" and inside:
                total += int(head[1])
    return total


@pytest.fixture()
def folder(tmp_path):
    _checkpoint(tmp_path)
    return tmp_path


def _pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_released_weights_give_the_same_outputs_and_leave_memory(folder):
    kept = load_backbone(f"hf:{folder}")
    with torch.inference_mode():
        want = kept.encode(_pixels()).pooled
    resident = _resident_kb(folder)
    assert resident > 12_000  # the forward made the weights (13 MB) resident
    del kept
    gc.collect()
    assert _resident_kb(folder) == 0  # (that mapping is gone)
    bb = load_backbone(f"hf:{folder}")
    covered = release_pages_after_forward(bb)
    assert covered > 12 * 2**20  # every weight matrix lies in the file mapping
    with torch.inference_mode():
        for _ in range(2):  # the second pass reads the released pages back
            assert torch.equal(bb.encode(_pixels()).pooled, want)
            # what stays: pages a later tensor's access maps back with its own (the kernel maps
            # whole page-cache folios, up to 2 MB, around a fault), a fraction of the weights
            assert _resident_kb(folder) < resident / 3


def test_a_geolocator_releases_its_frozen_backbone_by_default(folder, tmp_path_factory):
    from geoalign.inference.locator import Geolocator
    from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
    from geoalign.nn.image_head import ImageHeadConfig
    from geoalign.nn.location_encoder import LocationEncoderConfig

    torch.manual_seed(0)
    model = GeoCLIP(
        GeoCLIPConfig(
            image_head=ImageHeadConfig(in_dim=64, hidden_dim=16, out_dim=8),
            location_encoder=LocationEncoderConfig(
                n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
            ),
        )
    )
    photo = tmp_path_factory.mktemp("photo") / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(photo)
    latlon = np.column_stack([np.linspace(-50, 50, 30), np.linspace(-120, 120, 30)])
    got, resident = {}, {}
    for release in (False, True):
        geo = Geolocator(
            model,
            backbone=load_backbone(f"hf:{folder}"),
            gallery=latlon,
            cache=False,
            release_weight_pages=release,
        )
        got[release] = geo.predict([str(photo)], top_k=3, min_separation_km=0)[0].candidates
        resident[release] = _resident_kb(folder)
        del geo
        gc.collect()
    assert got[True] == got[False]
    assert resident[True] < resident[False] / 3


def test_nothing_unsafe_is_released(folder):
    trainable = load_backbone(f"hf:{folder}")
    trainable.requires_grad_(True)
    assert release_pages_after_forward(trainable) == 0  # its weights may be written

    written = load_backbone(f"hf:{folder}")
    first = next(written.parameters())
    with torch.no_grad():
        first.mul_(1.0)  # a copy-on-write page: the file no longer holds what the model does
    home = [m for m in file_mappings() if m.start <= first.data_ptr() < m.end]
    assert home and home[0].path.endswith(".safetensors") and home[0].anonymous_kb > 0
    assert release_pages_after_forward(written) == 0

    moved = load_backbone(f"hf:{folder}")
    assert release_pages_after_forward(moved) > 0
    with torch.no_grad():
        for p in moved.parameters():
            p.data = p.data.clone()  # now anonymous memory: the hooks must not touch it
        out = moved.encode(_pixels()).pooled
        assert torch.isfinite(out).all()
        assert torch.equal(moved.encode(_pixels()).pooled, out)


def test_weights_written_after_set_up_are_never_reverted(folder):
    bb = load_backbone(f"hf:{folder}")
    assert release_pages_after_forward(bb) > 0
    x = _pixels()
    with torch.no_grad():
        for p in bb.parameters():
            p.mul_(0.5)  # in place, after set-up: the file no longer holds these weights
        halved = [p.clone() for p in bb.parameters()]
        with pytest.warns(UserWarning, match="modified in place") as caught:
            want = bb.encode(x).pooled  # the hooks see the written pages and keep them
        assert len(caught) == 1  # one warning for the backbone, not one per module
        assert torch.equal(bb.encode(x).pooled, want)
        assert all(torch.equal(p, h) for p, h in zip(bb.parameters(), halved, strict=True))
