"""GeoSURGE's semantic fusion module (Daruna et al., Sec. III-B and Fig. 2).

A semantic segmentation map (ADE20K classes) is cut into 14x14 patches; each patch is linearly
projected to a 128-d token, a CLS token is prepended and positional embeddings are added. Fusion
blocks then let these segmentation tokens (queries) attend to the CLIP patch tokens (keys and
values) with latent multi-head cross-attention, followed by an MLP, with residual connections and
layer norms (plus self-attention among the segmentation tokens, see below). The fused CLS token
goes through a layer norm and a linear projection to the 768-d visual feature that is matched
against the geographic embeddings.

Where the paper is specific we follow it: 14x14 patches, 128-d segmentation tokens ("query
dimensionalities of 128"), attention width equal to the backbone's hidden size (1024 for
ViT-L/14-336), latent dimension 64, 3 blocks, CLS -> LayerNorm -> Linear -> 768.
Where it is silent we chose, and say so here:
- "Linearly projecting a patch" of a label map is read as a linear map of the patch's one-hot
  encoding (14*14*classes inputs). It is computed as a sum of embedding rows (`embedding_bag`),
  which is the same linear map without materialising the one-hot tensor (150x smaller memory).
  Labels >= num_classes (255 = "no label" in the segmentation store) share one extra class.
- Latent attention follows DeepSeek's multi-head latent attention (the paper's ref. [20]): keys
  and values are up-projected from one shared 64-d latent per CLIP token, c = W_down x; queries are
  not compressed (they are already 128-d). 16 heads of 64 dims (1024 in all, the backbone's
  width). By default the up-projections are absorbed into the query and output sides, so
  attention runs on the 64-d latents directly and per-head keys/values are never materialised
  (`absorb=False` computes the expanded form; both give the same result).
- Token mixing among the segmentation tokens. Read literally (segmentation queries attend to RGB
  keys/values, then a per-token MLP, repeated, then the CLS token is read out), no path leads from
  the segmentation patches to the CLS token: the output would not depend on the map at all. Each
  block therefore starts with latent self-attention among the segmentation tokens (same latent
  design, keys/values from the segmentation tokens), as in a transformer decoder block, so the CLS
  token gathers the map before querying the RGB tokens.
- Pre-norm blocks: x += SelfAttn(LN(x)); x += CrossAttn(LN(x), LN_kv(rgb)); x += MLP(LN(x));
  MLP hidden width = 1024 (GELU). The RGB tokens are the last CLIP encoder layer's hidden states
  (before its final layer norm and projection, "without projection and output normalization"),
  so each block normalises them.
- No dropout by default (the paper names none).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ADE20K_CLASSES = 150


@dataclass(frozen=True)
class SemanticFusionConfig:
    num_classes: int = ADE20K_CLASSES
    image_size: int = 336  # side of the (square) segmentation map, = the backbone's input size
    patch_size: int = 14
    token_dim: int = 128  # segmentation tokens (the queries)
    visual_dim: int = 1024  # CLIP hidden size (keys and values come from these tokens)
    attention_dim: int = 1024  # heads x head dim
    num_heads: int = 16
    latent_dim: int = 64  # shared key/value latent per CLIP token
    mlp_dim: int = 1024
    num_blocks: int = 3
    out_dim: int = 768
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim {self.attention_dim} is not divisible by {self.num_heads} heads"
            )
        if self.num_blocks < 1:
            raise ValueError("a fusion module needs >= 1 block (0 blocks = no fusion module)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SemanticFusionConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown semantic fusion config keys: {sorted(unknown)}")
        return cls(**d)


class SegmentationTokenizer(nn.Module):
    """Label map [B, S, S] -> tokens [B, 1 + (S/p)^2, token_dim]: patch projection, CLS, positions.

    `weight[(pixel_in_patch * (C + 1) + label)]` is the column of the one-hot linear projection,
    so a patch token is the sum of its pixels' rows plus the bias.
    """

    def __init__(self, config: SemanticFusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.n_labels = c.num_classes + 1  # + "no label"
        fan_in = c.patch_size**2 * self.n_labels
        self.weight = nn.Parameter(torch.empty(fan_in, c.token_dim))
        self.bias = nn.Parameter(torch.zeros(c.token_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.token_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.token_dim))
        # A patch is one-hot with exactly p*p ones, so init like nn.Linear on p*p active inputs.
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(c.patch_size**2))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        offsets = torch.arange(c.patch_size**2) * self.n_labels
        self.register_buffer("_offsets", offsets, persistent=False)

    def patch_indices(self, seg: Tensor) -> Tensor:
        """[B, S, S] labels -> [B * patches, p*p] rows of `weight` (row-major patches)."""
        c = self.config
        if seg.dim() != 3 or seg.shape[1] != c.image_size or seg.shape[2] != c.image_size:
            raise ValueError(
                f"segmentation maps must be [B, {c.image_size}, {c.image_size}] (the backbone's "
                f"input size), got {tuple(seg.shape)}"
            )
        labels = seg.long().clamp(min=0, max=c.num_classes)  # >= num_classes: "no label"
        b, g, p = seg.shape[0], c.grid, c.patch_size
        patches = labels.view(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b * g * g, p * p)
        return patches + self._offsets

    def forward(self, seg: Tensor) -> Tensor:
        b = seg.shape[0]
        idx = self.patch_indices(seg.to(self.weight.device))
        tokens = F.embedding_bag(idx, self.weight, mode="sum") + self.bias
        tokens = tokens.view(b, self.config.num_patches, -1)
        cls = self.cls_token.expand(b, -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class LatentCrossAttention(nn.Module):
    """Multi-head cross-attention whose keys and values come from one small latent per token.

    k_h = W_k,h c, v_h = W_v,h c with c = W_down x (latent_dim). With `absorb=True` the scores are
    computed as (W_k,h^T q_h) . c and the output as W_v,h (attn . c), which is the same arithmetic
    regrouped: keys/values per head ([B, H, N, d]) are never built.
    """

    def __init__(
        self,
        query_dim: int,
        kv_dim: int,
        attention_dim: int,
        num_heads: int,
        latent_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        self.latent_dim = latent_dim
        self.q_proj = nn.Linear(query_dim, attention_dim)
        self.kv_down = nn.Linear(kv_dim, latent_dim)
        self.k_up = nn.Linear(latent_dim, attention_dim, bias=False)
        self.v_up = nn.Linear(latent_dim, attention_dim, bias=False)
        self.out_proj = nn.Linear(attention_dim, query_dim)
        self.dropout = dropout

    def forward(self, queries: Tensor, keys_values: Tensor, *, absorb: bool = True) -> Tensor:
        b, nq, _ = queries.shape
        nk = keys_values.shape[1]
        h, d, lat = self.num_heads, self.head_dim, self.latent_dim
        latent = self.kv_down(keys_values)  # [B, Nk, latent]
        q = self.q_proj(queries).view(b, nq, h, d).transpose(1, 2)  # [B, H, Nq, d]
        drop = self.dropout if self.training else 0.0
        if absorb:
            w_k = self.k_up.weight.view(h, d, lat)
            w_v = self.v_up.weight.view(h, d, lat)
            q_lat = torch.einsum("bhqd,hdl->bhql", q, w_k)
            kv = latent[:, None].expand(b, h, nk, lat)
            o_lat = F.scaled_dot_product_attention(
                q_lat, kv, kv, dropout_p=drop, scale=1.0 / math.sqrt(d)
            )
            out = torch.einsum("bhql,hdl->bhqd", o_lat, w_v)
        else:
            k = self.k_up(latent).view(b, nk, h, d).transpose(1, 2)
            v = self.v_up(latent).view(b, nk, h, d).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * d))


class FusionBlock(nn.Module):
    """Segmentation tokens mix among themselves, attend to the RGB tokens, then an MLP; pre-norm
    residual branches."""

    def __init__(self, config: SemanticFusionConfig) -> None:
        super().__init__()
        c = config
        self.norm_self = nn.LayerNorm(c.token_dim)
        self.self_attn = LatentCrossAttention(
            c.token_dim, c.token_dim, c.attention_dim, c.num_heads, c.latent_dim, c.dropout
        )
        self.norm_q = nn.LayerNorm(c.token_dim)
        self.norm_kv = nn.LayerNorm(c.visual_dim)
        self.attn = LatentCrossAttention(
            c.token_dim, c.visual_dim, c.attention_dim, c.num_heads, c.latent_dim, c.dropout
        )
        self.norm_mlp = nn.LayerNorm(c.token_dim)
        self.mlp = nn.Sequential(
            nn.Linear(c.token_dim, c.mlp_dim),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.mlp_dim, c.token_dim),
            nn.Dropout(c.dropout),
        )

    def forward(self, tokens: Tensor, rgb: Tensor, *, absorb: bool = True) -> Tensor:
        mixed = self.norm_self(tokens)
        tokens = tokens + self.self_attn(mixed, mixed, absorb=absorb)
        tokens = tokens + self.attn(self.norm_q(tokens), self.norm_kv(rgb), absorb=absorb)
        return tokens + self.mlp(self.norm_mlp(tokens))


class SemanticFusion(nn.Module):
    """Label map + CLIP tokens -> fused visual feature [B, out_dim] (not normalised)."""

    def __init__(self, config: SemanticFusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or SemanticFusionConfig()
        c = self.config
        self.tokenizer = SegmentationTokenizer(c)
        self.blocks = nn.ModuleList(FusionBlock(c) for _ in range(c.num_blocks))
        self.norm = nn.LayerNorm(c.token_dim)
        self.proj = nn.Linear(c.token_dim, c.out_dim)

    def forward(self, seg: Tensor, rgb_tokens: Tensor, *, absorb: bool = True) -> Tensor:
        """seg: [B, S, S] integer labels; rgb_tokens: [B, 1 + patches, visual_dim], CLS first."""
        if rgb_tokens.dim() != 3 or rgb_tokens.shape[-1] != self.config.visual_dim:
            raise ValueError(
                f"RGB tokens must be [B, T, {self.config.visual_dim}], got {tuple(rgb_tokens.shape)}"
            )
        if rgb_tokens.shape[0] != seg.shape[0]:
            raise ValueError(f"{seg.shape[0]} segmentation maps but {rgb_tokens.shape[0]} images")
        param = self.proj.weight
        rgb = rgb_tokens.to(device=param.device, dtype=param.dtype)
        tokens = self.tokenizer(seg).to(param.dtype)
        for block in self.blocks:
            tokens = block(tokens, rgb, absorb=absorb)
        return self.proj(self.norm(tokens[:, 0]))
