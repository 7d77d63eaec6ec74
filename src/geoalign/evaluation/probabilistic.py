"""How good a locator's distributions are, beyond its point estimates: the coverage of its
regions (reliability), selective prediction (risk vs coverage), recall vs search area, and the
false-alarm rate and power of `geoalign verify`.

Everything is computed from per-query numbers the harness collects once per distribution
(`ProbabilisticStats`): the level of the true location, the area of the smallest region holding
it, the 90% region's area, and the levels of claims moved away from the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoalign.geo.distance import EARTH_RADIUS_KM

RELIABILITY_PS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MOVES_KM = (200.0, 750.0, 2500.0)
AREAS_KM2 = (1e3, 1e4, 1e5, 1e6, 1e7)
ANSWERED = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ALPHA = 0.05


def moved(latlon: np.ndarray, km: float, rng: np.random.Generator) -> np.ndarray:
    """Points `km` away from each of `latlon` [N, 2] in uniformly random directions."""
    lat1, lon1 = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    bearing = rng.uniform(0, 2 * np.pi, len(latlon))
    d = km / EARTH_RADIUS_KM
    lat2 = np.arcsin(np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(bearing))
    lon2 = lon1 + np.arctan2(
        np.sin(bearing) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * np.sin(lat2)
    )
    lon2 = (np.degrees(lon2) + 180) % 360 - 180
    return np.stack([np.degrees(lat2), lon2], axis=1)


@dataclass
class ProbabilisticStats:
    """Per-query numbers of one model's distributions (see module doc)."""

    truth_level: np.ndarray
    covering_area_km2: np.ndarray
    area90_km2: np.ndarray
    moved_levels: dict[float, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> ProbabilisticStats:
        return cls(np.empty(n), np.empty(n), np.empty(n), {km: np.empty(n) for km in MOVES_KM})

    def fill(
        self, rows: slice, dists: list[Any], truth: np.ndarray, rng: np.random.Generator
    ) -> None:
        for j, dist in zip(range(rows.start, rows.stop), dists, strict=True):
            t = truth[j : j + 1]
            self.truth_level[j] = dist.level_of(t)[0]
            self.covering_area_km2[j] = dist.covering_area_km2(t)[0]
            self.area90_km2[j] = dist.region(0.9, countries=False).area_km2
            for km in MOVES_KM:
                self.moved_levels[km][j] = dist.level_of(moved(t, km, rng))[0]

    def reliability(self) -> dict[float, float]:
        """Empirical coverage of the p-regions, per nominal p."""
        return {p: float((self.truth_level <= p).mean()) for p in RELIABILITY_PS}

    def calibration_error(self) -> float:
        """Mean |coverage - p| over RELIABILITY_PS (an ECE-style summary of the regions)."""
        return float(np.mean([abs(c - p) for p, c in self.reliability().items()]))

    def false_alarm_rate(self, alpha: float = ALPHA) -> float:
        """`verify` at alpha with the true location as the claim: the fraction flagged."""
        return float((self.truth_level > 1 - alpha).mean())

    def power(self, alpha: float = ALPHA) -> dict[float, float]:
        """`verify` at alpha against claims moved by each distance: the fraction flagged."""
        return {km: float((lv > 1 - alpha).mean()) for km, lv in self.moved_levels.items()}

    def recall_vs_area(self) -> dict[float, float]:
        """Fraction of truths inside a highest-density region of at most each area."""
        return {a: float((self.covering_area_km2 <= a).mean()) for a in AREAS_KM2}

    def risk_coverage(self, errors_km: np.ndarray) -> list[dict[str, float]]:
        """Answering only the most localizable photos (smallest 90% region first): median error
        and accuracy within 750 km among the answered, per fraction answered."""
        order = np.argsort(self.area90_km2, kind="stable")
        out = []
        for frac in ANSWERED:
            k = max(1, int(round(frac * len(order))))
            e = errors_km[order[:k]]
            out.append(
                {
                    "answered": frac,
                    "median_km": float(np.median(e)),
                    "acc@750km": float((e <= 750).mean() * 100),
                    "max_area90_km2": float(self.area90_km2[order[k - 1]]),
                }
            )
        return out

    def summary(self, errors_km: np.ndarray) -> dict[str, Any]:
        return {
            "reliability": self.reliability(),
            "calibration_error": self.calibration_error(),
            "verify_false_alarm@0.05": self.false_alarm_rate(),
            "verify_power@0.05": self.power(),
            "recall_vs_area": self.recall_vs_area(),
            "risk_coverage": self.risk_coverage(errors_km),
            "median_area90_km2": float(np.median(self.area90_km2)),
        }
