"""Predict's memory savings change no output: the gallery is normalised in place (never held
twice), the cache is checked block by block, and predictions match the copying path bit for bit."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPVisionConfig

from geoalign.inference.gallery_cache import gallery_embeddings, read_cached
from geoalign.inference.locator import Geolocator
from geoalign.inference.search import GallerySearch
from geoalign.models.base import feature_major, is_feature_major
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.backbones import ClipBackbone
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def _tiny_geoclip() -> GeoCLIP:
    torch.manual_seed(0)
    config = GeoCLIPConfig(
        location_encoder=LocationEncoderConfig(
            n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
        ),
        image_head=ImageHeadConfig(in_dim=12, hidden_dim=16, out_dim=8),
        queue_size=16,
    )
    return GeoCLIP(config).eval()


def _tiny_backbone() -> ClipBackbone:
    torch.manual_seed(1)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=12,
    )
    return ClipBackbone.from_config(config)


def _gallery(n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)])


def test_handed_over_keys_are_normalised_in_place_to_the_same_values():
    model = _tiny_geoclip()
    latlon = _gallery()
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(len(latlon), 8, generator=g) * torch.rand(len(latlon), 1, generator=g)
    keys = feature_major(keys)  # the gallery cache's layout
    expected = F.normalize(keys.clone(), dim=-1)  # what the copying code computed
    cand = model.candidates(latlon, keys)
    assert cand.keys.data_ptr() == keys.data_ptr()  # no second gallery-sized buffer
    assert torch.equal(cand.keys, expected)
    rows = torch.randn(len(latlon), 8, generator=g)  # row by row: one copy, into that layout
    cand = model.candidates(latlon, rows.clone())
    assert is_feature_major(cand.keys) and torch.equal(cand.keys, F.normalize(rows, dim=-1))
    with torch.inference_mode():  # the cache-miss path hands over an inference tensor
        fresh = torch.randn(len(latlon), 8, generator=g)
    expected = F.normalize(fresh.clone(), dim=-1)
    assert torch.equal(model.candidates(latlon, fresh).keys, expected)
    half = torch.randn(len(latlon), 8, generator=g).half()  # other dtypes: converted, then unit
    assert torch.equal(model.candidates(latlon, half).keys, F.normalize(half.float(), dim=-1))


def test_predictions_are_identical_to_the_copying_path(tmp_path):
    model, backbone, latlon = _tiny_geoclip(), _tiny_backbone(), _gallery()
    photos = []
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(pixels).save(photos[-1])
    geo = Geolocator(model, backbone=backbone, gallery=latlon, cache=False)
    got = geo.predict([str(p) for p in photos], top_k=5, min_separation_km=0)
    # the earlier code path: a normalised copy of the embeddings, then the search's own pass
    keys = gallery_embeddings(model.location_encoder, latlon, cache=False)
    old = GallerySearch(F.normalize(keys.float(), dim=-1), model.temperature(), copy=False)
    assert torch.equal(geo.search.embeddings, old.embeddings)
    geo.search = old
    again = geo.predict([str(p) for p in photos], top_k=5, min_separation_km=0)
    assert [p.candidates for p in got] == [p.candidates for p in again]
    assert len(got[0].candidates) == 5


def test_cache_check_counts_bad_values_across_blocks(tmp_path):
    arr = np.ones((20_000, 4), dtype=np.float32)
    for row in (0, 8191, 8192, 19_999):
        arr[row, 1] = np.nan
    arr[5000, 3] = np.inf
    np.save(tmp_path / "c.npy", arr)
    got, why = read_cached(tmp_path / "c.npy", 20_000, 4)
    assert got is None and why == "5 NaN/inf values"
    np.save(tmp_path / "ok.npy", np.ones((20_000, 4), dtype=np.float32))
    got, why = read_cached(tmp_path / "ok.npy", 20_000, 4)
    assert why is None and got.shape == (20_000, 4)


def _tiny_full_clip(folder) -> None:
    """A text + vision CLIP checkpoint, as `save_pretrained` writes openai's."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    text.update(vocab_size=99, max_position_embeddings=16, projection_dim=24)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, image_size=32)
    vision.update(num_attention_heads=4, patch_size=16, projection_dim=24)
    torch.manual_seed(4)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    CLIPModel(config).save_pretrained(folder)


def test_bf16_tower_read_tensor_by_tensor_equals_transformers_load(tmp_path, monkeypatch):
    from transformers import CLIPVisionModelWithProjection

    from geoalign.nn.backbones import load_backbone

    _tiny_full_clip(tmp_path)
    ref = CLIPVisionModelWithProjection.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()

    def mapped_and_converted(*args, **kwargs):
        raise AssertionError("float32 pages + bf16 copies at once: the path this avoids")

    monkeypatch.setattr(CLIPVisionModelWithProjection, "from_pretrained", mapped_and_converted)
    ours = load_backbone(f"hf:{tmp_path}", dtype=torch.bfloat16)
    assert not any("text" in name for name, _ in ours.named_parameters())
    a, b = ref.state_dict(), ours.model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(pixel_values=x.bfloat16())
    got = ours.encode(x)
    assert torch.equal(got.pooled, want.image_embeds)
    assert torch.equal(got.tokens, want.last_hidden_state)


def test_converted_load_leaves_unusual_checkpoints_to_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    from geoalign.nn.backbones.hf_clip import CLIP_CHECKPOINT, _load_converted
    from geoalign.nn.backbones.hub import resolve_checkpoint

    _tiny_full_clip(tmp_path)
    ckpt = resolve_checkpoint(str(tmp_path), CLIP_CHECKPOINT, True)
    assert _load_converted(ckpt, torch.bfloat16) is not None
    state = load_file(tmp_path / "model.safetensors")
    del state["visual_projection.weight"]
    save_file(state, tmp_path / "model.safetensors")
    assert _load_converted(ckpt, torch.bfloat16) is None  # a missing tensor: not guessed at
    (tmp_path / "model.safetensors").unlink()
    assert _load_converted(ckpt, torch.bfloat16) is None  # no single safetensors file
