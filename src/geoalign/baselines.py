"""Baselines on the same features as the aligned model, so every report shows what alignment adds.

- `KNN`: retrieval over training features (cosine). k = 1 is plain 1-NN; k > 1 with a kernel
  bandwidth is the density vote of [L]kNN (Vo, Jacobs & Hays, ICCV 2017): among the k neighbours'
  locations, predict the one with the most (Gaussian-weighted) neighbour locations around it.
- `DensestLocation`: the training-set prior -- one constant prediction, the training location with
  the most training locations within a radius. Anything that learns must beat it.
- `GeocellClassifier`: classification over an S2 geocell hierarchy built from the training
  coordinates (GeoCLIP's "C (w/ H)" row, after ISNs' multi-partition classification): one linear
  head per level on the features, cross-entropy, prediction = argmax over finest cells of the
  product of the cell's probabilities at every level, output = the cell's mean training location.

All share `fit(features, latlon) -> self` and `predict(features) -> (N, 2) lat/lon`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from geoalign.geo.coords import as_latlon_array
from geoalign.geo.distance import EARTH_RADIUS_KM, pairwise_haversine_km


class Baseline(Protocol):
    name: str

    def fit(self, features: np.ndarray, latlon: np.ndarray) -> Baseline: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def _unit(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def _as_features(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    if t.dim() == 3:  # [N, crops, D]: baselines use the mean over crops
        t = t.mean(dim=1)
    return t


# --- kNN ------------------------------------------------------------------------------------------


@dataclass
class KNN:
    """k nearest training features (cosine); k = 1: their location; k > 1: density vote."""

    k: int = 1
    sigma_km: float | None = None  # kernel bandwidth of the vote; None with k > 1: majority 1-NN
    name: str = ""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.name:
            self.name = "1-NN" if self.k == 1 else f"[L]kNN (k={self.k}, σ={self.sigma_km:g} km)"

    def fit(self, features, latlon) -> KNN:
        from geoalign.inference.search import GallerySearch

        self._coords = as_latlon_array(latlon, source="training coordinates")
        self._search = GallerySearch(_as_features(features), logit_scale=1.0)
        return self

    def predict(self, features, batch_size: int = 1024) -> np.ndarray:
        q = _as_features(features)
        out = np.empty((len(q), 2))
        for start in range(0, len(q), batch_size):
            res = self._search.topk(q[start : start + batch_size], k=self.k)
            idx = res.indices.numpy()
            if self.k == 1:
                out[start : start + len(idx)] = self._coords[idx[:, 0]]
                continue
            for row, nbrs in enumerate(idx):
                pts = self._coords[nbrs]
                d = pairwise_haversine_km(pts, pts)
                sigma = self.sigma_km if self.sigma_km else 1e-9
                score = np.exp(-0.5 * (d / sigma) ** 2).sum(axis=1)
                out[start + row] = pts[int(np.argmax(score))]
        return out


# --- the training-set prior -------------------------------------------------------------------------


@dataclass
class DensestLocation:
    """Predict, for every query, the training location with the most training mass within a radius.

    Candidates and counted points are random samples of the training set (fixed seed) when it is
    large: the densest place is a coarse quantity and this keeps `fit` to a second."""

    radius_km: float = 750.0
    max_candidates: int = 4000
    max_points: int = 20000
    seed: int = 0
    name: str = ""
    location: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"prior: densest training location ({self.radius_km:g} km)"

    def fit(self, features, latlon) -> DensestLocation:
        coords = as_latlon_array(latlon, source="training coordinates")
        rng = np.random.default_rng(self.seed)
        cand = coords[rng.choice(len(coords), min(len(coords), self.max_candidates), replace=False)]
        pts = coords[rng.choice(len(coords), min(len(coords), self.max_points), replace=False)]
        # Within the radius <=> unit-vector dot product >= cos(radius / R): one matrix product.
        min_dot = np.cos(self.radius_km / EARTH_RADIUS_KM)
        cand_xyz, pts_xyz = _unit(cand), _unit(pts)
        counts = np.zeros(len(cand))
        for start in range(0, len(cand), 1000):
            counts[start : start + 1000] = (
                cand_xyz[start : start + 1000] @ pts_xyz.T >= min_dot
            ).sum(1)
        self.location = cand[int(np.argmax(counts))]
        return self

    def predict(self, features) -> np.ndarray:
        n = len(features)
        return np.repeat(self.location[None], n, axis=0)


# --- geocell classification ---------------------------------------------------------------------------


def default_taus(n: int) -> tuple[tuple[int, ...], int]:
    """Partition thresholds for n training rows: cells of roughly n/64, n/256, n/1024 samples.

    MP-16's published partitions (τ_max 5000/2000/1000 for 4.7M photos) would leave a few
    thousand rows with single-photo cells, so the thresholds follow the data size instead."""
    taus = tuple(max(8, int(round(n / d))) for d in (64, 256, 1024))
    taus = tuple(sorted(set(taus), reverse=True))
    return taus, max(2, taus[-1] // 8)


@dataclass
class GeocellClassifier:
    """Linear classifiers over an S2 geocell hierarchy of the training coordinates ("C (w/ H)")."""

    tau_max: tuple[int, ...] | None = None
    tau_min: int | None = None
    epochs: int = 10
    lr: float = 1e-3  # linear heads on frozen features (the paper trains classifiers at 3e-4)
    weight_decay: float = 1e-6
    batch_size: int = 1024
    seed: int = 0
    name: str = "C (w/ H): geocell classification"

    def fit(self, features, latlon) -> GeocellClassifier:
        from geoalign.geo.cells import CellHierarchy, PartitionRules

        coords = as_latlon_array(latlon, source="training coordinates")
        x = _as_features(features)
        taus, tau_min = default_taus(len(coords))
        taus = tuple(self.tau_max) if self.tau_max else taus
        tau_min = self.tau_min or tau_min
        self.hierarchy = CellHierarchy.build(
            coords[:, 0], coords[:, 1], tau_max=taus, rules=PartitionRules(tau_min=tau_min)
        )
        labels = torch.from_numpy(
            self.hierarchy.assign(coords[:, 0], coords[:, 1], missing="nearest")
        )
        self.sizes = self.hierarchy.sizes
        self.mean = x.mean(0)
        self.std = x.std(0).clamp(min=1e-6)
        x = (x - self.mean) / self.std
        gen = torch.Generator().manual_seed(self.seed)
        self.head = torch.nn.Linear(x.shape[1], sum(self.sizes))
        with torch.no_grad():
            w = torch.randn(self.head.weight.shape, generator=gen) / x.shape[1] ** 0.5
            self.head.weight.copy_(w)
            self.head.bias.zero_()
        opt = torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), self.batch_size):
                rows = perm[start : start + self.batch_size]
                logits = self.head(x[rows]).split(self.sizes, dim=1)
                loss = sum(F.cross_entropy(lg, labels[rows, k]) for k, lg in enumerate(logits))
                opt.zero_grad()
                loss.backward()
                opt.step()
        fine = self.hierarchy.partitions[-1]
        self._centres = np.stack([fine.lat_mean, fine.lon_mean], axis=1)
        chain = self.hierarchy.chain(np.arange(len(fine)))  # [n_fine, levels]
        self._chain = torch.from_numpy(chain)
        return self

    @torch.no_grad()
    def log_probs(self, features) -> torch.Tensor:
        """[N, n_fine] hierarchical log-probability of every finest cell."""
        x = (_as_features(features) - self.mean) / self.std
        parts = [F.log_softmax(lg, dim=1) for lg in self.head(x).split(self.sizes, dim=1)]
        total = torch.zeros(len(x), self._chain.shape[0])
        for k, lp in enumerate(parts):
            idx = self._chain[:, k]
            total += torch.where(idx >= 0, lp[:, idx.clamp(min=0)], torch.full_like(total, -30.0))
        return total

    def predict(self, features) -> np.ndarray:
        best = self.log_probs(features).argmax(dim=1).numpy()
        return self._centres[best]


def default_baselines(radius_km: float = 750.0, classifier_epochs: int = 10) -> list:
    """The baselines every report shows: 1-NN, [L]kNN, the prior and geocell classification."""
    return [
        KNN(k=1),
        KNN(k=25, sigma_km=250.0),
        DensestLocation(radius_km=radius_km),
        GeocellClassifier(epochs=classifier_epochs, lr=1e-3 if classifier_epochs >= 10 else 3e-3),
    ]
