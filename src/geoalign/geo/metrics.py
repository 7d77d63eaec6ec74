"""Geo-localization metrics as the papers report them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)
# Street, city, region, country, continent: the names the papers give the thresholds.
THRESHOLD_NAMES = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}
GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7


def accuracy_at_km(dist_km, thresholds: Sequence[float] = THRESHOLDS_KM) -> dict[float, float]:
    """Fraction of predictions within each threshold (inclusive), in [0, 1]."""
    d = np.asarray(dist_km, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("accuracy_at_km: no distances given")
    return {t: float(np.mean(d <= t)) for t in thresholds}


def geoscore(dist_km) -> np.ndarray:
    """GeoGuessr score per prediction: 5000 * exp(-d / 1492.7)."""
    return GEOSCORE_MAX * np.exp(-np.asarray(dist_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def summarize_errors(dist_km, thresholds: Sequence[float] = THRESHOLDS_KM) -> dict[str, float]:
    """The table row every report prints: acc@km in percent, median/mean km, mean GeoScore."""
    d = np.asarray(dist_km, dtype=np.float64).reshape(-1)
    out = {f"acc@{t:g}km": 100.0 * v for t, v in accuracy_at_km(d, thresholds).items()}
    out.update(
        median_km=float(np.median(d)),
        mean_km=float(np.mean(d)),
        geoscore=float(np.mean(geoscore(d))),
        n=float(d.size),
    )
    return out
