"""GeoSURGE's semantic fusion module: exact equivalences, shapes, dtypes, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from geoalign.nn.semantic_fusion import (
    LatentCrossAttention,
    SegmentationTokenizer,
    SemanticFusion,
    SemanticFusionConfig,
)

TINY = SemanticFusionConfig(
    num_classes=5,
    image_size=12,
    patch_size=4,
    token_dim=8,
    visual_dim=16,
    attention_dim=16,
    num_heads=4,
    latent_dim=6,
    mlp_dim=24,
    num_blocks=2,
    out_dim=10,
)


def _seg(b: int, cfg: SemanticFusionConfig = TINY, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.num_classes, (b, cfg.image_size, cfg.image_size), generator=g)


def test_patch_projection_is_linear_map_of_one_hot_patches():
    tok = SegmentationTokenizer(TINY)
    seg = _seg(2)
    seg[0, 0, 0] = 255  # "no label" -> the extra class
    out = tok(seg)
    # Reference: one-hot every pixel (classes + no-label), cut row-major p x p patches, flatten
    # (pixel-major, class-minor) and apply the weight as an ordinary nn.Linear.
    c, p, g = TINY.num_classes + 1, TINY.patch_size, TINY.grid
    onehot = F.one_hot(seg.clamp(max=TINY.num_classes), c).float()  # [B, S, S, C]
    patches = onehot.view(2, g, p, g, p, c).permute(0, 1, 3, 2, 4, 5).reshape(2, g * g, p * p * c)
    expected = patches @ tok.weight + tok.bias
    assert out.shape == (2, 1 + g * g, TINY.token_dim)
    torch.testing.assert_close(out[:, 1:], expected + tok.pos_embed[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out[:, 0], (tok.cls_token + tok.pos_embed[:, :1])[:, 0].expand(2, -1)
    )


def test_patch_tokens_see_where_in_the_patch_a_label_is():
    """A linear map of the one-hot patch is not a histogram: moving a pixel changes the token."""
    tok = SegmentationTokenizer(TINY)
    seg = torch.zeros(1, 12, 12, dtype=torch.long)
    a, b = seg.clone(), seg.clone()
    a[0, 0, 0], b[0, 1, 1] = 3, 3
    assert not torch.allclose(tok(a)[:, 1], tok(b)[:, 1])
    torch.testing.assert_close(tok(a)[:, 2:], tok(b)[:, 2:])  # other patches untouched


def test_latent_attention_absorbed_equals_expanded_and_a_reference():
    torch.manual_seed(1)
    attn = LatentCrossAttention(8, 16, 16, 4, 6)
    q, kv = torch.randn(3, 5, 8), torch.randn(3, 7, 16)
    fast, slow = attn(q, kv, absorb=True), attn(q, kv, absorb=False)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # Written out: c = W_down x; per head softmax(q k^T / sqrt(d)) v with k = W_k c, v = W_v c.
    c = attn.kv_down(kv)
    qh = attn.q_proj(q).view(3, 5, 4, 4)
    kh = (c @ attn.k_up.weight.T).view(3, 7, 4, 4)
    vh = (c @ attn.v_up.weight.T).view(3, 7, 4, 4)
    w = torch.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(4)
    o = torch.einsum("bhqk,bkhd->bqhd", w.softmax(-1), vh).reshape(3, 5, 16)
    torch.testing.assert_close(fast, attn.out_proj(o), rtol=1e-5, atol=1e-5)


def test_fusion_shapes_gradients_and_dependence_on_both_inputs():
    torch.manual_seed(0)
    fusion = SemanticFusion(TINY)
    seg, rgb = _seg(3), torch.randn(3, 10, TINY.visual_dim, requires_grad=True)
    out = fusion(seg, rgb)
    assert out.shape == (3, TINY.out_dim)
    out.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    no_grad = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []
    with torch.no_grad():
        other_seg = fusion(_seg(3, seed=1), rgb)
        other_rgb = fusion(seg, torch.randn_like(rgb))
    assert not torch.allclose(out, other_seg) and not torch.allclose(out, other_rgb)


def test_fusion_is_batch_independent_and_runs_in_bfloat16():
    torch.manual_seed(0)
    fusion = SemanticFusion(TINY).eval()
    seg, rgb = _seg(4), torch.randn(4, 10, TINY.visual_dim)
    with torch.no_grad():
        full = fusion(seg, rgb)
        single = torch.cat([fusion(seg[i : i + 1], rgb[i : i + 1]) for i in range(4)])
        low = fusion.to(torch.bfloat16)(seg, rgb)  # fp32 tokens are cast to the module's dtype
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), full, rtol=0.1, atol=0.1)


def test_paper_defaults_and_input_checks():
    cfg = SemanticFusionConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.grid, cfg.token_dim) == (336, 14, 24, 128)
    assert (cfg.visual_dim, cfg.attention_dim, cfg.latent_dim, cfg.num_blocks) == (
        1024,
        1024,
        64,
        3,
    )
    assert cfg.out_dim == 768
    assert SemanticFusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SemanticFusionConfig(image_size=30, patch_size=14)
    fusion = SemanticFusion(TINY)
    with pytest.raises(ValueError, match=r"\[B, 12, 12\]"):
        fusion(torch.zeros(1, 16, 16, dtype=torch.long), torch.randn(1, 10, 16))
    with pytest.raises(ValueError, match="RGB tokens"):
        fusion(_seg(1), torch.randn(1, 10, 8))
