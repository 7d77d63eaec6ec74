"""Calibration of a locator's distributions on validation data, stored with the checkpoint.

Two steps, both fitted on held-out rows with known locations (never the test set):
1. Temperature scaling (Guo et al. 2017) and the smoothing level: the factor `scale` that
   multiplies the model's logits and the S2 level of the density's box kernel are chosen to
   minimise the mean negative log-likelihood of the smoothed density at the true locations,
   among the levels whose support (cells holding a candidate) contains at least `SUPPORT` of
   the validation truths: a truth outside every candidate cell is outside every region, so a
   finer level with a better likelihood could not give 90% regions that hold 90% of truths.
2. Split-conformal regions (Vovk et al.; Angelopoulos & Bates 2021): a region of nominal
   probability p is the highest-density region holding mass q(p), where q(p) is the
   ceil((n + 1) p) / n empirical quantile of the validation truths' levels. Under
   exchangeability the p-region then contains the truth with probability >= p.
Temperature scaling alone fixes the sharpness of the distribution but not the coverage of its
regions (the box kernel and the gallery's density shape those), hence the second step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.errors import DataError

P_GRID = tuple(round(p, 2) for p in np.arange(0.01, 1.0, 0.01))
SCALES = tuple(float(s) for s in np.geomspace(0.1, 10.0, 25))
LEVELS = (3, 4, 5, 6, 7, 8)
SUPPORT = 0.98  # a level is admissible when this share of validation truths lies in its support


@dataclass
class Calibration:
    """What `fit_calibration` found: logit factor, smoothing level and the conformal masses."""

    scale: float = 1.0
    level: int = 6
    masses: list[float] = field(default_factory=lambda: list(P_GRID))  # q(p) for p in P_GRID
    fitted_on: str = ""
    n: int = 0
    nll_before: float | None = None
    nll_after: float | None = None

    def __call__(self, p: float) -> float:
        """The mass a nominal p-region must hold."""
        return float(np.interp(p, (0.0, *P_GRID, 1.0), (0.0, *self.masses, 1.0)))

    def nominal(self, mass: np.ndarray) -> np.ndarray:
        """Inverse of `__call__`: the nominal p of a region holding `mass`."""
        xs, ys = np.array((0.0, *self.masses, 1.0)), np.array((0.0, *P_GRID, 1.0))
        xs = np.maximum.accumulate(xs)  # quantiles are monotone; guard ties for interp
        return np.interp(mass, xs, ys)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            cal = cls(**d)
        except TypeError as err:
            raise DataError(f"bad calibration record in config.json ({err})") from err
        if len(cal.masses) != len(P_GRID) or not math.isfinite(cal.scale) or cal.scale <= 0:
            raise DataError("bad calibration record in config.json (masses or scale)")
        return cal


def stored_calibration(config: dict[str, Any]) -> Calibration | None:
    """The calibration a checkpoint's config.json holds (`geoalign calibrate`, or `train` on a
    validation split), None when it holds none: every command that reads a checkpoint applies
    it, so predict, evaluate, explain and serve give the same probabilities."""
    record = config.get("calibration")
    return Calibration.from_dict(record) if record else None


def nll_table(
    geo: Any,
    queries: Any,
    truth: np.ndarray,
    scales: tuple[float, ...],
    levels: tuple[int, ...],
    chunk: int = 256,
) -> np.ndarray:
    """[len(scales), len(levels)] mean -log density (per km²) at the true locations.

    The density at a point is (1 - w) * mass(cell) / area(cell) + w / (4 pi R²) (see
    `inference.distribution`): only the mass of the truth's cell is needed, a log-sum-exp over
    its members, so no distribution is built and the logits are computed once per chunk."""
    import torch

    from geoalign.inference.distribution import EARTH_AREA_KM2, UNIFORM_WEIGHT
    from geoalign.models.base import logits as model_logits

    grids = [geo.grid(lv) for lv in levels]
    cells = [g.cell_index(truth) for g in grids]
    s = torch.tensor(scales, dtype=torch.float64)[:, None]
    total = np.zeros((len(scales), len(levels)))
    for start in range(0, len(truth), chunk):
        logits = model_logits(geo.model, queries[start : start + chunk], geo.candidates)
        logits = logits.double().cpu()
        denom = torch.logsumexp(s[:, :, None] * logits[None], dim=-1)  # [S, b]
        for k, (grid, cell) in enumerate(zip(grids, cells, strict=True)):
            for j in range(logits.shape[0]):
                c = cell[start + j]
                if c < 0:
                    mass = torch.zeros(len(scales), dtype=torch.float64)
                else:
                    members, weights = grid.members(int(c))
                    log_w = torch.from_numpy(np.log(weights))
                    num = torch.logsumexp(s * logits[j, members][None] + log_w, dim=-1)
                    mass = torch.exp(num - denom[:, j])
                dens = (1 - UNIFORM_WEIGHT) * mass / grid.area_km2[max(c, 0)] * (c >= 0)
                total[:, k] -= torch.log(dens + UNIFORM_WEIGHT / EARTH_AREA_KM2).numpy()
    return total / len(truth)


def fit_calibration(
    geo: Any,
    features: Any,
    truth: np.ndarray,
    *,
    fitted_on: str,
    scales: tuple[float, ...] = SCALES,
    levels: tuple[int, ...] = LEVELS,
) -> Calibration:
    """Fit the logit factor and level by NLL, then the conformal masses (see module doc)."""
    import torch

    from geoalign.geo.coords import as_latlon_array
    from geoalign.inference.distribution import DEFAULT_LEVEL

    truth = as_latlon_array(truth, source="calibration truth")
    if len(truth) < 20:
        raise DataError(f"calibration needs at least 20 validation rows, got {len(truth)}")
    feats = torch.as_tensor(features if torch.is_tensor(features) else np.asarray(features))
    if len(feats) != len(truth):
        raise DataError(f"{len(feats)} feature rows but {len(truth)} locations")
    queries = torch.cat([geo.embed_features(c) for c in feats.float().split(512)])
    before = float(nll_table(geo, queries, truth, (1.0,), (DEFAULT_LEVEL,))[0, 0])
    table = nll_table(geo, queries, truth, tuple(scales), tuple(levels))
    support = np.array([(geo.grid(lv).cell_index(truth) >= 0).mean() for lv in levels])
    admissible = support >= SUPPORT
    if not admissible.any():  # the coarsest level covers the most
        admissible = np.asarray(levels) == min(levels)
    table_ok = np.where(admissible[None, :], table, np.inf)
    i, k = np.unravel_index(int(np.argmin(table_ok)), table.shape)
    scale, level, nll = float(scales[i]), int(levels[k]), float(table[i, k])
    found = []
    for s in range(0, len(truth), 256):
        dists = geo.distributions(queries[s : s + 256], level=level, scale=scale)
        found += [d.level_of(truth[j : j + 1])[0] for j, d in enumerate(dists, start=s)]
    n = len(found)
    ranked = np.sort(found)
    masses = []
    for p in P_GRID:
        rank = min(n, math.ceil((n + 1) * p))  # the conformal rank; the max when (n+1)p > n
        masses.append(float(min(ranked[rank - 1], 1.0 - 1e-9)))
    return Calibration(scale, level, masses, fitted_on, n, before, nll)


def save_calibration(checkpoint_dir: Path, calibration: Calibration) -> Path:
    """Record the calibration in the checkpoint's config.json (atomically, through the one
    writer of entries learnt after export)."""
    from geoalign.models.checkpoint import record_in_config

    record_in_config(Path(checkpoint_dir), {"calibration": calibration.to_dict()})
    return Path(checkpoint_dir) / "config.json"
