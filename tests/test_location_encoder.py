import math

import pytest
import torch

from geoalign.nn.location_encoder import (
    LocationEncoder,
    LocationEncoderConfig,
    exponential_sigmas,
)
from geoalign.nn.rff import GaussianFourierFeatures


def test_exponential_sigmas_eq2():
    assert exponential_sigmas(1, 256, 3) == (1.0, 16.0, 256.0)
    s5 = exponential_sigmas(1, 256, 5)
    assert s5 == pytest.approx((1, 4, 16, 64, 256))
    ratios = [b / a for a, b in zip(s5, s5[1:], strict=False)]
    assert ratios == pytest.approx([4.0] * 4)  # geometric spacing
    assert exponential_sigmas(2, 2, 1) == (2.0,)
    with pytest.raises(ValueError):
        exponential_sigmas(0, 1, 3)


def test_rff_definition():
    rff = GaussianFourierFeatures(
        sigma=4.0, n_frequencies=8, generator=torch.Generator().manual_seed(0)
    )
    v = torch.randn(5, 2)
    expected = torch.cat(
        [torch.cos(2 * math.pi * v @ rff.b.T), torch.sin(2 * math.pi * v @ rff.b.T)], dim=-1
    )
    torch.testing.assert_close(rff(v), expected)
    assert rff.out_features == 16
    assert not any(p.requires_grad for p in rff.parameters())  # B is a buffer, not trained
    assert "b" in rff.state_dict()


def test_default_shapes_match_release_and_paper_variant():
    enc = LocationEncoder()
    assert len(enc.branches) == 3
    linears = [m for m in enc.branches[0].modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [
        (1024, 512),
        (1024, 1024),
        (1024, 1024),
        (512, 1024),
    ]
    paper = LocationEncoder(LocationEncoderConfig.paper())
    assert sum(isinstance(m, torch.nn.Linear) for m in paper.branches[0].modules()) == 5
    out = enc(torch.tensor([[48.85, 2.35], [-33.9, 151.2]]))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_any_number_of_scales_and_ablations():
    for cfg in (
        LocationEncoderConfig(n_scales=5, hidden_dim=32, n_frequencies=16, embed_dim=8),
        LocationEncoderConfig(
            projection="none", fourier=False, n_scales=1, hidden_dim=16, embed_dim=8
        ),
        LocationEncoderConfig(sigmas=(16.0,), hidden_dim=16, n_frequencies=8, embed_dim=8),
    ):
        enc = LocationEncoder(cfg)
        assert len(enc.branches) == len(cfg.resolved_sigmas)
        assert enc(torch.zeros(3, 2)).shape == (3, 8)
    cfg = LocationEncoderConfig(sigmas=(2.0, 8.0), hidden_dim=16, n_frequencies=4096, embed_dim=4)
    stds = [LocationEncoder(cfg).branches[i].rff.b.std().item() for i in range(2)]
    assert stds == pytest.approx([2.0, 8.0], rel=0.05)


def test_config_round_trip_and_unknown_keys():
    cfg = LocationEncoderConfig(n_scales=4, hidden_dim=64)
    back = LocationEncoderConfig.from_dict(cfg.to_dict())
    assert back.resolved_sigmas == cfg.resolved_sigmas and back.hidden_dim == 64
    with pytest.raises(ValueError, match="unknown"):
        LocationEncoderConfig.from_dict({"bogus": 1})


def test_encode_chunks_equal_single_pass_and_bf16():
    cfg = LocationEncoderConfig(hidden_dim=32, n_frequencies=16, embed_dim=8)
    enc = LocationEncoder(cfg).eval()
    x = torch.rand(100, 2) * torch.tensor([180.0, 360.0]) - torch.tensor([90.0, 180.0])
    with torch.no_grad():
        full = enc(x)
    torch.testing.assert_close(enc.encode(x, batch_size=7), full)
    enc16 = LocationEncoder(cfg).eval().to(torch.bfloat16)
    enc16.load_state_dict(enc.state_dict())
    # RFF buffers stay fp32-computed; only the MLP runs in bf16.
    out = enc16.encode(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), full, atol=0.05, rtol=0.05)


def test_gradients_flow_to_mlp_not_rff():
    enc = LocationEncoder(LocationEncoderConfig(hidden_dim=16, n_frequencies=8, embed_dim=4))
    enc(torch.randn(4, 2)).sum().backward()
    assert enc.branches[0].head.weight.grad is not None
    assert all(not b.requires_grad for n, b in enc.named_buffers())
