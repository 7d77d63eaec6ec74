"""Random Fourier features (Tancik et al. 2020): γ(v) = [cos 2πBv, sin 2πBv], B ~ N(0, σ²).

Written here rather than taken from the `rff` package because B must be a saved buffer (the official
GeoCLIP weights carry it), and the phase must be computed in the official operation order,
(2π·v) @ Bᵀ, in at least float32: at σ = 256 the phase reaches thousands of radians and half
precision would scramble it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianFourierFeatures(nn.Module):
    """Frozen Gaussian random Fourier features; output width is 2 × n_frequencies."""

    def __init__(
        self,
        sigma: float,
        n_frequencies: int = 256,
        input_dim: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sigma = float(sigma)
        b = torch.randn(n_frequencies, input_dim, generator=generator) * self.sigma
        self.register_buffer("b", b)

    def _apply(self, fn, recurse=True):
        # Casting the model to bf16/fp16 must not round B: keep it in full precision, move device only.
        b = self.b
        super()._apply(fn, recurse)
        if self.b.dtype in (torch.float16, torch.bfloat16):
            self.b = b.to(self.b.device)
        return self

    @property
    def out_features(self) -> int:
        return 2 * self.b.shape[0]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(v.dtype, torch.float32)
        vp = (2 * math.pi * v.to(work)) @ self.b.to(work).T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)
