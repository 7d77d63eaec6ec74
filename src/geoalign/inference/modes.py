"""Prediction modes over a GPS gallery.

- top-1 retrieval (the papers' protocol): the gallery entry with the highest similarity;
- mode seeking: the gallery location holding the most probability mass within `radius_km`.

With weak evidence the softmax over a gallery is flat and its single highest entry is close to a
random draw from the training distribution; summing the probability that falls within a radius
finds the region the evidence points to, trading street-level precision for country- and
continent-level accuracy. The winning region's highest-probability entry is returned, so strong
evidence still lands on a precise point.

The gallery's neighbourhoods are precomputed once: gallery entries are grouped into bins (each
entry its own bin up to `max_bins` entries, beyond that S2 cells a quarter of the radius across),
and a sparse
bin-to-bin matrix marks bins whose representative entries lie within the radius. Per query this
costs one scatter-add over the gallery and one sparse product.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from geoalign.geo.coords import as_latlon_array
from geoalign.geo.distance import EARTH_RADIUS_KM

MODES = ("top1", "mode")


def _unit(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


S2_FACE_EDGE_KM = 9200.0  # mean edge of an S2 face cell (level 0); halves with every level
MAX_BINS_HARD = 65536


def _bins(latlon: np.ndarray, radius_km: float, max_bins: int) -> tuple[np.ndarray, int]:
    """Bin index per gallery entry: identity up to `max_bins` entries; beyond, S2 cells about a
    quarter of the radius across (so a bin's members are interchangeable at that radius),
    coarser only if that would exceed MAX_BINS_HARD bins."""
    n = len(latlon)
    if n <= max_bins:
        return np.arange(n), -1
    from geoalign.geo.s2.ids import latlon_to_cell_ids, parent_ids

    leaves = latlon_to_cell_ids(latlon[:, 0], latlon[:, 1])
    level = int(np.clip(np.ceil(np.log2(S2_FACE_EDGE_KM / (radius_km / 4))), 0, 30))
    while True:
        _, inverse = np.unique(parent_ids(leaves, level), return_inverse=True)
        if inverse.max() + 1 <= MAX_BINS_HARD or level == 0:
            return inverse.reshape(-1), level
        level -= 1


class ModeSeeker:
    """Precomputed neighbourhoods of a gallery for mode-seeking predictions."""

    def __init__(self, gallery_latlon, radius_km: float = 750.0, max_bins: int = 8192) -> None:
        from scipy.sparse import csr_matrix
        from sklearn.neighbors import BallTree

        if radius_km <= 0:
            raise ValueError(f"radius_km must be positive, got {radius_km}")
        gallery = as_latlon_array(gallery_latlon, source="gallery")
        self.radius_km = float(radius_km)
        bin_of, self.s2_level = _bins(gallery, radius_km, max_bins)
        n_bins = int(bin_of.max()) + 1
        # Representative of a bin: the member closest to the bin's mean direction.
        xyz = _unit(gallery)
        mean = np.zeros((n_bins, 3))
        np.add.at(mean, bin_of, xyz)
        score = np.einsum("ij,ij->i", xyz, mean[bin_of])
        order = np.lexsort((-score, bin_of))
        first = np.ones(len(order), dtype=bool)
        first[1:] = bin_of[order][1:] != bin_of[order][:-1]
        reps = np.empty(n_bins, dtype=np.int64)
        reps[bin_of[order][first]] = order[first]
        tree = BallTree(np.radians(gallery[reps]), metric="haversine")
        neighbours = tree.query_radius(np.radians(gallery[reps]), r=radius_km / EARTH_RADIUS_KM)
        rows = np.repeat(np.arange(n_bins), [len(nb) for nb in neighbours])
        cols = np.concatenate(neighbours)
        self._neigh = csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_bins,) * 2
        )
        self.bin_of = torch.from_numpy(bin_of.astype(np.int64))
        self.n_bins = n_bins
        self.n_gallery = len(gallery)

    def select(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Gallery index per query [b] and the probability mass within the radius there [b].

        `probs`: [b, M] probabilities over the whole gallery (rows sum to 1)."""
        if probs.shape[-1] != self.n_gallery:
            raise ValueError(f"{probs.shape[-1]} probabilities for a gallery of {self.n_gallery}")
        p = probs.float().cpu()
        per_bin = torch.zeros(p.shape[0], self.n_bins).index_add_(1, self.bin_of, p)
        mass = torch.from_numpy(np.ascontiguousarray((self._neigh @ per_bin.numpy().T).T))
        best_mass, best_bin = mass.max(dim=1)
        if self.n_bins == self.n_gallery:
            return best_bin, best_mass
        in_best = self.bin_of[None, :] == best_bin[:, None]
        idx = p.masked_fill(~in_best, -1.0).argmax(dim=1)
        return idx, best_mass
