"""GPS gallery points grouped by geocell: turns a cell classifier's predicted cells into GPS
coordinates (GeoSURGE with `coordinates="gallery"`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from geoalign.geo.cells import CellHierarchy
from geoalign.geo.distance import haversine_km


class CellGallery:
    """GPS gallery points grouped by the finest cell containing them.

    `refine(cells, scores)` turns predicted cells into coordinates: the gallery point of the cell
    with the highest score (scores [B, M] over the whole gallery, e.g. GeoCLIP logits of the image),
    or without scores the point nearest the cell's mean training coordinate. Cells without a
    gallery point keep their mean.
    """

    def __init__(self, latlon: np.ndarray, hierarchy: CellHierarchy) -> None:
        self.latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        fine = hierarchy.partitions[-1]
        self.cell_latlon = np.stack([fine.lat_mean, fine.lon_mean], axis=1)
        cells = hierarchy.assign(self.latlon[:, 0], self.latlon[:, 1])[:, -1]
        self.point_cell = cells
        inside = np.flatnonzero(cells >= 0)
        self.order = inside[np.argsort(cells[inside], kind="stable")]
        n = len(fine)
        self.offsets = np.searchsorted(cells[self.order], np.arange(n + 1))
        self.nearest = np.full(n, -1, dtype=np.int64)
        if inside.size:
            mean = self.cell_latlon[cells[inside]]
            d = haversine_km(self.latlon[inside, 0], self.latlon[inside, 1], mean[:, 0], mean[:, 1])
            by_cell_then_distance = np.lexsort((d, cells[inside]))
            first = np.unique(cells[inside][by_cell_then_distance], return_index=True)
            self.nearest[first[0]] = inside[by_cell_then_distance[first[1]]]

    def __len__(self) -> int:
        return len(self.latlon)

    def refine(
        self, cells: np.ndarray, scores: Tensor | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates [B, k, 2], gallery index [B, k] or -1 where the cell mean was kept)."""
        cells = np.asarray(cells, dtype=np.int64)
        if scores is None:
            idx = self.nearest[cells]
        else:
            s = scores.detach().float().cpu().numpy() if torch.is_tensor(scores) else scores
            if s.shape != (cells.shape[0], len(self)):
                raise ValueError(f"scores must be [{cells.shape[0]}, {len(self)}], got {s.shape}")
            idx = np.full(cells.shape, -1, dtype=np.int64)
            for b, j in np.ndindex(*cells.shape):  # one small lookup per candidate, not per cell
                members = self.order[self.offsets[cells[b, j]] : self.offsets[cells[b, j] + 1]]
                if members.size:
                    idx[b, j] = members[np.argmax(s[b, members])]
        coords = np.where(
            (idx >= 0)[..., None], self.latlon[idx.clip(min=0)], self.cell_latlon[cells]
        )
        return coords, idx
