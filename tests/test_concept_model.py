"""The concept-aware model: construction, checkpoints, downstream loading, invariances."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def tiny_geoclip(in_dim: int = 24, embed: int = 16) -> GeoCLIP:
    torch.manual_seed(0)
    return GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=embed
            ),
            image_head=ImageHeadConfig(in_dim=in_dim, hidden_dim=32, out_dim=embed),
            queue_size=32,
        )
    )


@pytest.fixture(scope="module")
def model() -> ConceptAwareGeoCLIP:
    """40 concepts of the bundled set with random 24-d "CLIP" text embeddings (no text tower)."""
    from geoalign.data.concept_sets import load_concept_set

    cfg = ConceptConfig(k=40, head_hidden=(32,), top_k=5)
    cset = load_concept_set("geography").select(40)
    text = torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    return ConceptAwareGeoCLIP.from_geoclip(
        tiny_geoclip(), cfg, cset, text, text_kind="clip"
    ).eval()


def random_latlon(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g) * torch.tensor([170.0, 359.0]) - torch.tensor(
        [85.0, 180.0]
    )


def test_build_uses_the_image_head_for_clip_text_of_its_width(model):
    # CLIP text of the head's input width takes GeoCLIP's text-query route
    assert model.mapping == "image_head"
    assert model.num_concepts == 40 and len(model.concept_set) == 40
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.image_head(model.basis.text), dim=-1)
        assert torch.allclose(model.basis.concept_embeddings(), expected, atol=1e-6)
    built = ConceptAwareGeoCLIP.build(
        tiny_geoclip(), ConceptConfig(text_encoder="tiny:24", k=10), cache=False
    )
    assert built.mapping == "image_head" and built.num_concepts == 10
    assert built.text_encoder_fingerprint.startswith("tiny:24")
    other = ConceptAwareGeoCLIP.build(
        tiny_geoclip(), ConceptConfig(text_encoder="tiny:8", k=10), cache=False
    )
    assert other.mapping == "projection"  # 8-d text, 24-d head input


def test_scores_shapes_finite_sparse_and_batch_order_stable(model):
    x = torch.randn(12, 24)
    with torch.no_grad():
        emb = model.encode_images(x)
        z = model.image_concepts(emb)
        acts = model.activations(emb)
        perm = torch.randperm(12)
        z_perm = model.image_concepts(model.encode_images(x[perm]))
    assert z.shape == (12, 40) and torch.isfinite(z).all()
    assert ((acts != 0).sum(1) == 5).all()  # top_k = 5
    assert torch.allclose(z_perm, z[perm], atol=1e-5)
    zl = model.concepts_from_latlon(random_latlon(7))
    assert zl.shape == (7, 40) and torch.isfinite(zl).all()


def test_bf16_scores_are_close(model):
    x = torch.randn(6, 24)
    emb = model.encode_images(x)
    z32 = model.image_concepts(emb)
    z16 = model.image_concepts(emb.bfloat16())
    assert z16.dtype == torch.float32
    assert torch.allclose(z16, z32, atol=0.05)


def test_concept_loss_and_auxiliary_loss(model):
    x, ll = torch.randn(8, 24), random_latlon(8, 1)
    img, loc = model.encode_images(x), model.encode_locations(ll)
    loss = model.concept_loss(img, loc)
    assert loss.item() > 0 and loss.requires_grad
    # views: [P, b, d]; B = 16 batch locations of which this process holds rows 8..15
    batch_loc = torch.cat([model.encode_locations(random_latlon(8, 2)), loc])[None]
    term, logs = model.auxiliary_loss(img[None], batch_loc, target_offset=8)
    lam = model.concept_config.lambda_concept
    assert term.item() == pytest.approx(lam * loss.item(), rel=1e-5)
    assert "train/concept_loss" in logs


@pytest.mark.parametrize("residual", [True, False])
def test_paper_loss_through_mean_scores_is_the_divergence_of_all_scores(residual):
    """concept_loss takes eq. 6 through the mean scores: the same value and gradients as the
    divergence of every image's and location's scores."""
    from geoalign.data.concept_sets import load_concept_set
    from geoalign.losses import concept_divergence

    cfg = ConceptConfig(k=12, head_hidden=(32,), head_residual=residual, sigma=0.7)
    net = ConceptAwareGeoCLIP.from_geoclip(
        tiny_geoclip(), cfg, load_concept_set("geography").select(12), torch.randn(12, 24),
        text_kind="clip",
    )  # fmt: skip
    with torch.no_grad():  # a trained-looking head: the MLP part must count too
        for p in net.f_img.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x, ll = torch.randn(2, 10, 24), torch.stack([random_latlon(10, 3), random_latlon(10, 4)])
    img, loc = net.encode_images(x), net.encode_locations(ll.reshape(-1, 2)).reshape(2, 10, -1)
    params = [p for p in net.parameters() if p.requires_grad]
    fast = net.concept_loss(img, loc)
    direct = torch.stack(
        [
            concept_divergence(net.image_concepts(img[j]), net.location_concepts(loc[j]), 0.7)
            for j in range(2)
        ]
    ).mean()
    assert fast.item() > 0.01 and fast.item() == pytest.approx(direct.item(), rel=1e-5)
    g_fast = torch.autograd.grad(fast, params, allow_unused=True, retain_graph=True)
    g_direct = torch.autograd.grad(direct, params, allow_unused=True)
    for a, b in zip(g_fast, g_direct, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_and_downstream_loading(model, tmp_path):
    from geoalign.models.registry import load_checkpoint, load_image_head, load_location_encoder

    model.save(tmp_path / "ckpt", provenance={"test": True})
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["method"] == "concept" and cfg["concept"]["info"]["names"] == model.concept_set.names
    keys = set(load_checkpoint(tmp_path / "ckpt").state)
    assert any(k.startswith("location_encoder.") for k in keys)
    assert {"concept.basis.delta", "concept.basis.text", "concept.basis.embedding"} <= keys

    again = ConceptAwareGeoCLIP.load(tmp_path / "ckpt").eval()
    x, ll = torch.randn(5, 24), random_latlon(5, 3)
    with torch.no_grad():
        assert torch.allclose(
            again.concepts_from_features(x), model.concepts_from_features(x), atol=1e-6
        )
        assert torch.allclose(
            again.concepts_from_latlon(ll), model.concepts_from_latlon(ll), atol=1e-6
        )
        # usable wherever GeoCLIP's location encoder is
        enc = load_location_encoder(tmp_path / "ckpt")
        assert torch.allclose(enc(ll), model.encode_locations(ll), atol=1e-6)
        head = load_image_head(tmp_path / "ckpt")
        assert torch.allclose(head(x), model.encode_images(x), atol=1e-6)
    assert again.concept_set.texts() == model.concept_set.texts()
    assert [c.category for c in again.concept_set] == [c.category for c in model.concept_set]


def test_geolocator_and_downstream_encoder_read_a_concept_checkpoint(model, tmp_path):
    from geoalign.downstream.encoders import get_encoder
    from geoalign.inference.locator import Geolocator

    model.save(tmp_path / "ckpt")
    gallery = pd.DataFrame(random_latlon(50, 4).numpy().astype(np.float64), columns=["lat", "lon"])
    geo = Geolocator.from_pretrained(
        str(tmp_path / "ckpt"), backbone=None, gallery=gallery, cache=False
    )
    preds = geo.predict_features(torch.randn(3, 24), top_k=2)
    assert len(preds) == 3 and len(preds[0]) == 2
    emb = get_encoder(str(tmp_path / "ckpt"))(np.array([[48.85, 2.35], [35.68, 139.69]]))
    assert emb.shape == (2, 16) and np.isfinite(emb).all()


def test_load_rejects_a_geoclip_checkpoint(tmp_path):
    from geoalign.errors import WeightsNotFoundError

    tiny_geoclip().save(tmp_path / "g")
    with pytest.raises(WeightsNotFoundError, match="'geoclip' checkpoint, not a 'concept' one"):
        ConceptAwareGeoCLIP.load(tmp_path / "g")


def test_config_round_trip_and_unknown_keys():
    cfg = ConceptConfig(k=50, head_hidden=(64, 32), divergence="cauchy-schwarz", sigma=0.5)
    assert ConceptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown concept config keys"):
        ConceptConfig.from_dict({"lambda": 1.0})
