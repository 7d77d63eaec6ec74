"""Equal Earth projection (Šavrič, Patterson & Jenny 2019), as GeoCLIP applies it.

Hand-written in torch because the location encoder needs it batched, differentiable and on the
model's device; pyproj's `+proj=eqearth` is the reference it is tested against. GeoCLIP divides the
unit-sphere coordinates by 180/66.50336 so that longitude spans [-1, 1] and latitude is scaled by the
same factor. The forward pass keeps GeoCLIP's exact float32 operation order so that the official
weights see the inputs they were trained on, bit for bit.
"""

from __future__ import annotations

import math

import torch

A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
GEOCLIP_SF = 66.50336  # GeoCLIP's factor: output = unit-sphere coordinates × SF / 180
UNIT_SPHERE_SF = 180.0
_SQRT3 = math.sqrt(3.0)


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    # Half precision cannot hold the fine RFF phases downstream; compute in at least float32.
    return torch.promote_types(x.dtype, torch.float32)


def equal_earth(latlon_deg: torch.Tensor, *, sf: float = GEOCLIP_SF) -> torch.Tensor:
    """(N, 2) lat/lon in degrees -> (N, 2) projected (x, y) × sf / 180 (sf=180: unit sphere).

    With GeoCLIP's default sf, x = ±1 at longitude ±180°.
    """
    x = latlon_deg.to(_working_dtype(latlon_deg))
    lat, lon = torch.deg2rad(x[..., 0]), torch.deg2rad(x[..., 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, dtype=x.dtype, device=x.device))
    theta = torch.asin((sqrt3 / 2) * torch.sin(lat))
    denom = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    px = (2 * sqrt3 * lon * torch.cos(theta)) / denom
    py = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return (torch.stack((px, py), dim=-1) * sf) / 180


def equal_earth_inverse(
    xy: torch.Tensor, *, sf: float = GEOCLIP_SF, iterations: int = 12
) -> torch.Tensor:
    """Inverse projection: (N, 2) scaled (x, y) -> (N, 2) lat/lon in degrees (Newton on θ)."""
    p = xy.to(_working_dtype(xy)) * 180 / sf
    px, py = p[..., 0], p[..., 1]
    theta = py.clone()
    for _ in range(iterations):
        t2 = theta * theta
        t6 = t2 * t2 * t2
        f = theta * (A1 + A2 * t2 + t6 * (A3 + A4 * t2)) - py
        fprime = A1 + 3 * A2 * t2 + t6 * (7 * A3 + 9 * A4 * t2)
        theta = theta - f / fprime
    t2 = theta * theta
    t6 = t2 * t2 * t2
    denom = 3 * (A1 + 3 * A2 * t2 + t6 * (7 * A3 + 9 * A4 * t2))
    lon = px * denom / (2 * _SQRT3 * torch.cos(theta))
    lat = torch.asin((2 / _SQRT3) * torch.sin(theta).clamp(-_SQRT3 / 2, _SQRT3 / 2))
    return torch.stack((torch.rad2deg(lat), torch.rad2deg(lon)), dim=-1)
