"""The concept basis is grounded in the head the model uses: E = normalise(head(t)) follows the
image head as it changes, through training, and into the saved checkpoint."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geoalign.data.concept_sets import load_concept_set
from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def tiny_model(seed: int = 0) -> ConceptAwareGeoCLIP:
    torch.manual_seed(seed)
    geoclip = GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
            ),
            image_head=ImageHeadConfig(in_dim=24, hidden_dim=32, out_dim=16),
            queue_size=32,
        )
    )
    text = torch.randn(12, 24, generator=torch.Generator().manual_seed(1))
    cfg = ConceptConfig(k=12, head_hidden=(32,))
    cset = load_concept_set("geography").select(12)
    return ConceptAwareGeoCLIP.from_geoclip(geoclip, cfg, cset, text, text_kind="clip").eval()


def test_concept_scores_follow_the_image_head():
    model = tiny_model()
    loc = torch.randn(7, 16)
    with torch.no_grad():
        before = model.location_concepts(loc)
        for p in model.image_head.parameters():  # a different head, as training makes
            p.add_(torch.randn_like(p))
        after = model.location_concepts(loc)
        e = F.normalize(model.image_head(model.basis.text), dim=-1)
        expected = F.normalize(loc, dim=-1) @ (e + model.basis.delta).T
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-5)


def test_no_gradient_reaches_the_head_through_e():
    model = tiny_model().train()
    model.location_concepts(torch.randn(5, 16)).sum().backward()
    assert model.basis.delta.grad is not None  # Δ learns through B = E + Δ
    assert all(p.grad is None for p in model.image_head.parameters())


def test_a_trained_checkpoint_stores_the_e_of_its_head(tmp_path):
    from geoalign.models.registry import load_checkpoint
    from geoalign.training.concept import concept_run_from_dict, train_concept

    rng = np.random.default_rng(0)
    cities = np.array([[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.21]])
    city = rng.integers(0, 4, 400)
    coords = cities[city] + rng.normal(scale=0.5, size=(400, 2))
    feats = (np.eye(4, 16)[city] + rng.normal(scale=0.2, size=(400, 16))).astype("f4")
    raw = {
        "method": "concept",
        "name": "grounded",
        "model": {
            "init": "scratch",
            "queue_size": 64,
            "location_encoder": {
                "n_frequencies": 16,
                "hidden_dim": 32,
                "n_hidden": 1,
                "embed_dim": 16,
                "sigmas": [1.0, 4.0],
            },  # fmt: skip
            "image_head": {"hidden_dim": 32, "out_dim": 16},
        },
        "data": {"source": "arrays"},
        "optim": {"lr": 3e-3, "batch_size": 100, "epochs": 2},
        "trainer": {"out_dir": str(tmp_path / "run"), "resume": None, "progress": False},
        "concept": {"text_encoder": "tiny:16", "k": 10, "head_hidden": [16]},
        "cbm": {"fit": False},
    }
    run = concept_run_from_dict(raw, source="test")
    result = train_concept(run, arrays=(feats, coords))
    assert result.model.mapping == "image_head"
    state = load_checkpoint(result.export_dir).state
    text, stored = state["concept.basis.text"], state["concept.basis.embedding"]
    head = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    head.load_state_dict({k.removeprefix("image_head.net."): v for k, v in state.items()
                          if k.startswith("image_head.net.")})  # fmt: skip
    with torch.no_grad():
        expected = F.normalize(head(text.float()), dim=-1)
    assert torch.allclose(stored.float(), expected, atol=1e-5)
    loaded = ConceptAwareGeoCLIP.load(result.export_dir)
    assert torch.allclose(loaded.basis.concept_embeddings(), expected, atol=1e-5)
