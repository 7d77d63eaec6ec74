"""Reproducible land points and a spatial train/val/test split with a buffer.

Points are uniform by area (uniform z = sin(lat), uniform longitude), kept where they fall inside a
Natural Earth country polygon. The split assigns equal-area blocks (squares in the Equal Earth
projection) to train/val/test, then drops every train or val point closer than `buffer_km` to a point
of a later split, so no test point has a training (or validation) neighbour within the buffer: a
probe cannot score by interpolating between near-duplicate coordinates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from geoalign.downstream.sources import country_polygons
from geoalign.geo.distance import EARTH_RADIUS_KM

TRAIN, VAL, TEST, DROPPED = 0, 1, 2, -1
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}


@dataclass(frozen=True)
class LandPoints:
    latlon: np.ndarray  # (N, 2) float64 degrees
    country: np.ndarray  # (N,) country code of the containing polygon (ISO alpha-2 or ADM0_A3)


def sample_land_points(
    n: int, seed: int = 0, *, exclude: tuple[str, ...] = ("AQ",), batch: int = 50_000
) -> LandPoints:
    """`n` area-uniform points on land (inside a country polygon whose code is not in `exclude`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    polys = country_polygons()
    rng = np.random.default_rng(seed)
    lat_parts: list[np.ndarray] = []
    lon_parts: list[np.ndarray] = []
    code_parts: list[np.ndarray] = []
    have = 0
    while have < n:
        lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, batch)))
        lon = rng.uniform(-180.0, 180.0, batch)
        codes = polys.codes_at(np.stack([lat, lon], axis=1))
        keep = (codes != "") & ~np.isin(codes, exclude)
        lat_parts.append(lat[keep])
        lon_parts.append(lon[keep])
        code_parts.append(codes[keep].astype(str))
        have += int(keep.sum())
    latlon = np.stack([np.concatenate(lat_parts), np.concatenate(lon_parts)], axis=1)[:n]
    return LandPoints(latlon=latlon, country=np.concatenate(code_parts)[:n])


@dataclass(frozen=True)
class SplitConfig:
    """Block size and buffer in km; fractions of blocks for train/val/test."""

    block_km: float = 500.0
    buffer_km: float = 100.0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def block_ids(latlon: np.ndarray, block_km: float) -> np.ndarray:
    """Id of the equal-area block (Equal Earth square of side ~block_km) holding each point."""
    import torch

    from geoalign.geo.projection import UNIT_SPHERE_SF, equal_earth

    ll = torch.as_tensor(latlon, dtype=torch.float64)
    xy = equal_earth(ll, sf=UNIT_SPHERE_SF).numpy()  # unit sphere: multiply by R for km
    cell = np.floor(xy * EARTH_RADIUS_KM / block_km).astype(np.int64)
    _, ids = np.unique(cell, axis=0, return_inverse=True)
    return ids.reshape(-1)


def _near(points: np.ndarray, others: np.ndarray, radius_km: float) -> np.ndarray:
    """Mask of `points` with at least one of `others` within radius_km (great circle)."""
    from sklearn.neighbors import BallTree

    if len(points) == 0 or len(others) == 0 or radius_km <= 0:
        return np.zeros(len(points), dtype=bool)
    tree = BallTree(np.radians(others), metric="haversine")
    counts = tree.query_radius(np.radians(points), r=radius_km / EARTH_RADIUS_KM, count_only=True)
    return counts > 0


def spatial_split(latlon: np.ndarray, config: SplitConfig = SplitConfig()) -> np.ndarray:
    """Split label per point: TRAIN/VAL/TEST, or DROPPED inside the buffer around a later split."""
    latlon = np.asarray(latlon, dtype=np.float64)
    fr = np.asarray(config.fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1: {config.fractions}"
        )
    ids = block_ids(latlon, config.block_km)
    n_blocks = int(ids.max()) + 1
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n_blocks)
    bounds = np.rint(np.cumsum(fr) * n_blocks).astype(int)
    block_split = np.empty(n_blocks, dtype=np.int8)
    block_split[order[: bounds[0]]] = TRAIN
    block_split[order[bounds[0] : bounds[1]]] = VAL
    block_split[order[bounds[1] :]] = TEST
    split = block_split[ids].astype(np.int8)
    test, val, train = (split == s for s in (TEST, VAL, TRAIN))
    # Val keeps its distance from test; train from both (val drives model selection).
    val_near_test = _near(latlon[val], latlon[test], config.buffer_km)
    split[np.flatnonzero(val)[val_near_test]] = DROPPED
    held_out = latlon[(split == TEST) | (split == VAL)]
    train_near = _near(latlon[train], held_out, config.buffer_km)
    split[np.flatnonzero(train)[train_near]] = DROPPED
    return split
