"""GeoCLIP's hierarchical location encoder: Equal Earth → RFF at M scales → one MLP per scale → Σ.

The default configuration is the released checkpoint's (3 hidden layers of 1024 + a 1024→512 head per
scale, σ = 1, 16, 256); `LocationEncoderConfig.paper()` is the paper's text (4 hidden layers). The
ablation switches of the GeoCLIP paper's Table 3 (no projection, no Fourier features, a single σ) are
config fields, so every row of that table is the same module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from geoalign.geo.projection import equal_earth
from geoalign.nn.rff import GaussianFourierFeatures


def exponential_sigmas(sigma_min: float, sigma_max: float, n_scales: int) -> tuple[float, ...]:
    """σ_i = 2^(log2 σ_min + (i-1)(log2 σ_max − log2 σ_min)/(M−1)), GeoCLIP eq. 2 (M=1: σ_min)."""
    if n_scales < 1:
        raise ValueError(f"n_scales must be >= 1, got {n_scales}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n_scales == 1:
        return (float(sigma_min),)
    lo, hi = math.log2(sigma_min), math.log2(sigma_max)
    return tuple(2.0 ** (lo + i * (hi - lo) / (n_scales - 1)) for i in range(n_scales))


@dataclass(frozen=True)
class LocationEncoderConfig:
    sigma_min: float = 2.0**0
    sigma_max: float = 2.0**8
    n_scales: int = 3
    sigmas: tuple[float, ...] | None = None  # explicit σ per scale; overrides the three above
    n_frequencies: int = 256  # rows of each RFF matrix: the MLP input is twice this
    hidden_dim: int = 1024
    n_hidden: int = 3  # hidden Linear+ReLU layers before the head (released weights: 3)
    embed_dim: int = 512
    projection: Literal["equal_earth", "none"] = "equal_earth"
    fourier: bool = True  # False: the ablation "MLP only" / "+EEP" without RFF
    seed: int = 0  # seeds the RFF matrices of a freshly built encoder

    @property
    def resolved_sigmas(self) -> tuple[float, ...]:
        if self.sigmas is not None:
            return tuple(float(s) for s in self.sigmas)
        return exponential_sigmas(self.sigma_min, self.sigma_max, self.n_scales)

    @classmethod
    def paper(cls, **overrides: Any) -> LocationEncoderConfig:
        """The architecture as the GeoCLIP paper describes it (four hidden layers)."""
        return replace(cls(n_hidden=4), **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sigmas"] = list(self.resolved_sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocationEncoderConfig:
        d = dict(d)
        if d.get("sigmas") is not None:
            d["sigmas"] = tuple(d["sigmas"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown location-encoder config keys: {sorted(unknown)}")
        return cls(**d)


class ScaleBranch(nn.Module):
    """One σ: Fourier features then an MLP to the shared embedding width."""

    def __init__(self, cfg: LocationEncoderConfig, sigma: float, generator: torch.Generator):
        super().__init__()
        if cfg.fourier:
            self.rff: nn.Module = GaussianFourierFeatures(
                sigma, cfg.n_frequencies, input_dim=2, generator=generator
            )
            width = 2 * cfg.n_frequencies
        else:
            self.rff = nn.Identity()
            width = 2
        layers: list[nn.Module] = []
        for _ in range(cfg.n_hidden):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU()]
            width = cfg.hidden_dim
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.embed_dim)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        feats = self.rff(xy).to(self.head.weight.dtype)
        return self.head(self.mlp(feats))


class LocationEncoder(nn.Module):
    """(N, 2) latitude/longitude in degrees → (N, embed_dim) location embedding (unnormalised)."""

    def __init__(self, config: LocationEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or LocationEncoderConfig()
        generator = torch.Generator().manual_seed(self.config.seed)
        self.branches = nn.ModuleList(
            ScaleBranch(self.config, s, generator) for s in self.config.resolved_sigmas
        )

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def project(self, latlon: torch.Tensor) -> torch.Tensor:
        if self.config.projection == "equal_earth":
            return equal_earth(latlon)
        # No projection (ablation): lat/lon scaled to about [-1, 1] like the projected values.
        work = latlon.to(torch.promote_types(latlon.dtype, torch.float32))
        return work / work.new_tensor([90.0, 180.0])

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        xy = self.project(latlon)
        out = self.branches[0](xy)
        for branch in self.branches[1:]:
            out = out + branch(xy)
        return out

    @torch.inference_mode()
    def encode(self, latlon: torch.Tensor, batch_size: int = 4096, progress=None) -> torch.Tensor:
        """Embed many coordinates in chunks; chunks keep activations cache-sized (faster on CPU)."""
        param = next(self.parameters())
        latlon = latlon.to(param.device)
        out = torch.empty(latlon.shape[0], self.embed_dim, dtype=param.dtype, device=param.device)
        for start in range(0, latlon.shape[0], batch_size):
            stop = min(start + batch_size, latlon.shape[0])
            out[start:stop] = self(latlon[start:stop])
            if progress is not None:
                progress(stop - start)
        return out
