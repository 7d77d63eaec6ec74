"""Drawing a GPS gallery from training coordinates (reading gallery files: `data.galleries`)."""

from __future__ import annotations

import numpy as np


def sample_gallery(
    latlon: np.ndarray, size: int, *, seed: int = 0, dedupe_decimals: int | None = 4
) -> np.ndarray:
    """A GPS gallery drawn from training coordinates, as GeoCLIP built its 100K gallery.

    A uniform sample follows the training distribution (dense where photos are dense), which is
    what top-1 retrieval needs. `dedupe_decimals` first merges coordinates equal to that many
    decimals (4 ≈ 11 m), so heavily repeated landmarks do not take many gallery slots.
    """
    latlon = np.asarray(latlon, dtype=np.float64)
    if dedupe_decimals is not None:
        _, keep = np.unique(np.round(latlon, dedupe_decimals), axis=0, return_index=True)
        latlon = latlon[np.sort(keep)]
    if size >= len(latlon):
        return latlon
    rng = np.random.default_rng(seed)
    return latlon[np.sort(rng.choice(len(latlon), size=size, replace=False))]
