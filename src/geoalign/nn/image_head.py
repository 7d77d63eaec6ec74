"""The trainable image head of GeoCLIP (h1, ReLU, h2) on top of frozen backbone features."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ImageHeadConfig:
    in_dim: int = 768  # CLIP ViT-L/14 projected image embedding
    hidden_dim: int = 768
    out_dim: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageHeadConfig:
        return cls(**d)


class ImageHead(nn.Module):
    """Backbone feature (N, in_dim) → (N, out_dim) in the location-embedding space."""

    def __init__(self, config: ImageHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or ImageHeadConfig()
        c = self.config
        self.net = nn.Sequential(
            nn.Linear(c.in_dim, c.hidden_dim), nn.ReLU(), nn.Linear(c.hidden_dim, c.out_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.to(self.net[0].weight.dtype))
