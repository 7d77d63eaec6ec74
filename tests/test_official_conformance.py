"""The official GeoCLIP weights, loaded into our modules, give the geoclip package's outputs."""

import math

import numpy as np
import pytest
import torch

from geoalign.data.galleries import load_gallery
from geoalign.models.registry import (
    load_checkpoint,
    load_image_head,
    load_location_encoder,
    load_logit_scale,
)

geoclip = pytest.importorskip("geoclip")


def _random_coords(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))  # uniform on the sphere
    lon = rng.uniform(-180, 180, n)
    special = np.array(
        [
            [90, 0],
            [-90, 0],
            [90, 180],
            [-90, -180],
            [0, 180],
            [0, -180],
            [0, 179.9999],
            [0, -179.9999],
            [45, 180],
            [-45, -180],
            [0, 0],
            [89.9999, 123.0],
        ]
    )
    return torch.tensor(np.r_[special, np.c_[lat, lon]][:n], dtype=torch.float32)


def test_location_encoder_matches_official_on_10k_points():
    ours = load_location_encoder("geoclip")
    ref = geoclip.LocationEncoder().eval()
    x = _random_coords(10_000)
    with torch.no_grad():
        a = ours.encode(x, batch_size=2048)
        b = ref(x)
    assert (a - b).abs().max().item() <= 1e-5
    # and the embeddings are not trivially small/equal
    assert b.std().item() > 1e-3


def test_image_head_and_logit_scale_match_official():
    head = load_image_head("geoclip")
    ref = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 512))
    weights = geoclip.__path__[0] + "/model/weights/"
    ref.load_state_dict(torch.load(weights + "image_encoder_mlp_weights.pth", weights_only=True))
    x = torch.randn(64, 768)
    with torch.no_grad():
        torch.testing.assert_close(head(x), ref(x), atol=1e-6, rtol=0)
    scale = load_logit_scale("geoclip")
    assert math.exp(scale.item()) == pytest.approx(39.69, abs=0.01)


def test_subnormals_flushed_and_provenance_recorded():
    ckpt = load_checkpoint("geoclip")
    tiny = torch.finfo(torch.float32).tiny
    for t in ckpt.state.values():
        assert not ((t != 0) & (t.abs() < tiny)).any()
    prov = ckpt.config["provenance"]
    assert prov["subnormals_flushed"] > 10_000  # ~1% of the location encoder
    assert prov["rff_b_std_per_scale"] == pytest.approx([1, 16, 256], rel=0.05)
    assert set(prov["source_sha256"]) == {"location_encoder", "image_head", "logit_scale"}


def test_second_load_reads_converted_safetensors(tmp_path, monkeypatch):
    from geoalign.models import weights as zoo

    load_checkpoint("geoclip")
    calls = []
    monkeypatch.setattr(zoo, "convert_official_geoclip", lambda out: calls.append(out))
    load_checkpoint("geoclip")
    assert calls == []


def test_official_gallery():
    assert len(load_gallery("geoclip-100k", dedupe=False)) == 100_000
    g = load_gallery("geoclip-100k")  # exact repeats merged on load
    assert len(g) == 94_123 and g.attrs["duplicates_merged"] == 5_877
    assert g["lat"].between(-90, 90).all() and g["lon"].between(-180, 180).all()
