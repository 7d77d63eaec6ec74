"""One S2 partition of the Earth: adaptive cells holding between tau_min and tau_max samples.

The rule (PlaNet; Müller-Budack et al. 2018; GeoSURGE Sec. III-A): start from coarse S2 cells, split
every cell holding more than tau_max samples into its four children, and drop cells holding too few
samples. Because counts are fixed by the data (a cell's count is the number of samples inside it,
whatever happened elsewhere), the rule needs no loop over points: sort the leaf ids once, count the
distinct ancestors per S2 level with run lengths (`CountPyramid`), then walk the levels on the cell
tables only. Several tau_max values share one pyramid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from geoalign.geo.s2 import ids as s2ids


@dataclass(frozen=True)
class PartitionRules:
    """How cells are split and dropped.

    min_level: the level the recursion starts from; 0 = the six cube faces, as GeoSURGE describes.
        The GeoEstimation script that made the MP-16 cell files starts at level 2.
    max_level: cells at this level are kept even with more than tau_max samples (many photos can
        share one exact coordinate); 30 = leaf cells.
    min_inclusive: True keeps a cell holding exactly tau_min samples ("cells with fewer than tau_min
        samples are excluded", GeoSURGE); False drops it, as the GeoEstimation script does (`<=`) and
        as the MP-16 files show (their smallest cells hold tau_min + 1 = 51 images).
    """

    tau_min: int = 50
    min_level: int = 0
    max_level: int = s2ids.MAX_LEVEL
    min_inclusive: bool = True

    def __post_init__(self) -> None:
        if self.tau_min < 1:
            raise ValueError(f"tau_min must be >= 1, got {self.tau_min}")
        if not 0 <= self.min_level <= self.max_level <= s2ids.MAX_LEVEL:
            raise ValueError(
                f"need 0 <= min_level <= max_level <= 30, got {self.min_level}, {self.max_level}"
            )

    @classmethod
    def geoestimation(cls, tau_min: int = 50) -> PartitionRules:
        """The rules of the script behind the MP-16 cell files (lvl_min 2, drop count <= tau_min)."""
        return cls(tau_min=tau_min, min_level=2, max_level=s2ids.MAX_LEVEL, min_inclusive=False)

    def enough(self, counts: np.ndarray) -> np.ndarray:
        return counts >= self.tau_min if self.min_inclusive else counts > self.tau_min


@dataclass
class CountPyramid:
    """Distinct S2 cells and their sample counts, per level, for the cells a split can reach.

    Level L holds every cell whose ancestors (from rules.min_level) all have more than
    `split_above` samples; that covers every partition with tau_max >= split_above.
    """

    rules: PartitionRules
    split_above: int
    levels: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        leaf_ids: np.ndarray,
        rules: PartitionRules,
        split_above: int,
        progress: Callable[[int], None] | None = None,
    ) -> CountPyramid:
        active = np.sort(np.asarray(leaf_ids, dtype=np.uint64), kind="stable")
        pyramid = cls(rules=rules, split_above=int(split_above))
        for level in range(rules.min_level, rules.max_level + 1):
            if active.size == 0:
                break
            # Sorted leaves have sorted ancestors (Hilbert order nests), so run lengths count them.
            parents = s2ids.parent_ids(active, level)
            starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
            counts = np.diff(np.r_[starts, parents.size])
            pyramid.levels[level] = (parents[starts], counts)
            if progress is not None:
                progress(level)
            splittable = (counts > split_above) & rules.enough(counts)
            if not splittable.any():
                break
            active = active[np.repeat(splittable, counts)]
        return pyramid

    def partition(self, tau_max: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell ids sorted, counts) of the partition for `tau_max` (>= split_above)."""
        if tau_max < self.split_above:
            raise ValueError(f"pyramid built for tau_max >= {self.split_above}, asked {tau_max}")
        rules = self.rules
        kept_ids: list[np.ndarray] = []
        kept_counts: list[np.ndarray] = []
        split_prev: np.ndarray | None = None
        for level in sorted(self.levels):
            ids, counts = self.levels[level]
            if split_prev is not None:
                parent = s2ids.parent_ids(ids, level - 1)
                pos = np.searchsorted(split_prev, parent).clip(max=split_prev.size - 1)
                reach = split_prev[pos] == parent
                ids, counts = ids[reach], counts[reach]
            enough = rules.enough(counts)
            split = enough & (counts > tau_max) & (level < rules.max_level)
            keep = enough & ~split
            kept_ids.append(ids[keep])
            kept_counts.append(counts[keep])
            split_prev = ids[split]
            if split_prev.size == 0:
                break
        cells = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.uint64)
        counts = np.concatenate(kept_counts) if kept_counts else np.zeros(0, np.int64)
        order = np.argsort(cells, kind="stable")
        return cells[order], counts[order].astype(np.int64)


class Partition:
    """Cells of one partition level, in class-index order, with fast point/cell lookup.

    Attributes are numpy arrays indexed by class index: cell_ids (uint64), counts, lat_mean,
    lon_mean, labels. Lookup works on id ranges: an S2 cell is the contiguous range of leaf ids
    [range_min, range_max], and the cells of a partition are disjoint.
    """

    def __init__(
        self,
        cell_ids: np.ndarray,
        counts: np.ndarray,
        lat_mean: np.ndarray,
        lon_mean: np.ndarray,
        *,
        tau_max: int | None = None,
        name: str = "partition",
        labels: np.ndarray | None = None,
    ) -> None:
        self.cell_ids = np.asarray(cell_ids, dtype=np.uint64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.lat_mean = np.asarray(lat_mean, dtype=np.float64)
        self.lon_mean = np.asarray(lon_mean, dtype=np.float64)
        self.tau_max = tau_max
        self.name = name
        n = self.cell_ids.size
        # Class labels as published (e.g. MP-16 class_label after dropping unreadable rows);
        # for partitions built here they equal the class index.
        self.labels = np.arange(n) if labels is None else np.asarray(labels, dtype=np.int64)
        if not all(
            a.shape == (n,) for a in (self.counts, self.lat_mean, self.lon_mean, self.labels)
        ):
            raise ValueError(f"{name}: cell arrays have different lengths")
        self._order = np.argsort(self.cell_ids, kind="stable")
        self._rmin = s2ids.range_min(self.cell_ids[self._order])
        self._rmax = s2ids.range_max(self.cell_ids[self._order])

    def __len__(self) -> int:
        return int(self.cell_ids.size)

    def __repr__(self) -> str:
        return f"Partition({self.name!r}, cells={len(self)}, tau_max={self.tau_max})"

    @cached_property
    def levels(self) -> np.ndarray:
        return s2ids.cell_levels(self.cell_ids)

    @cached_property
    def tokens(self) -> list[str]:
        return s2ids.ids_to_tokens(self.cell_ids)

    def overlaps(self) -> np.ndarray:
        """Class indices of cells overlapping the next cell in id order (a valid partition has none)."""
        bad = self._rmax[:-1] >= self._rmin[1:]
        return np.sort(np.concatenate([self._order[:-1][bad], self._order[1:][bad]]))

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Class index of the cell that contains each cell/leaf id, or -1 (outside every cell)."""
        ids = np.asarray(ids, dtype=np.uint64)
        return self._locate(s2ids.range_min(ids), s2ids.range_max(ids))

    def locate_leaves(self, leaf_ids: np.ndarray) -> np.ndarray:
        """`locate` for leaf ids (a leaf is its own range): the hot path of assigning points."""
        leaf_ids = np.asarray(leaf_ids, dtype=np.uint64)
        return self._locate(leaf_ids, leaf_ids)

    def _locate(self, qmin: np.ndarray, qmax: np.ndarray) -> np.ndarray:
        if len(self) == 0:
            return np.full(qmin.shape, -1, dtype=np.int64)
        k = np.searchsorted(self._rmin, qmin, side="right") - 1
        np.maximum(k, 0, out=k)
        inside = (qmax <= self._rmax[k]) & (qmin >= self._rmin[k])
        return np.where(inside, self._order[k], -1)

    def covered_by(self, ids: np.ndarray) -> np.ndarray:
        """Number of this partition's cells lying inside each given cell (for nesting checks)."""
        ids = np.asarray(ids, dtype=np.uint64)
        lo = np.searchsorted(self._rmin, s2ids.range_min(ids), side="left")
        hi = np.searchsorted(self._rmin, s2ids.range_max(ids), side="right")
        return hi - lo


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(3, N) unit vectors of degree coordinates (rows contiguous for fast per-axis sums)."""
    phi, lam = np.radians(lat), np.radians(lon)
    cp = np.cos(phi)
    return np.stack([cp * np.cos(lam), cp * np.sin(lam), np.sin(phi)], axis=0)


def spherical_means(
    labels: np.ndarray, xyz: np.ndarray, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell mean location from (3, N) unit vectors: their normalised mean, as lat/lon.

    Unlike averaging degrees (what the GeoEstimation script wrote), this stays right for cells that
    cross the antimeridian; for small cells the two agree to ~1e-6 degrees.
    """
    ok = labels >= 0
    if not ok.all():
        labels, xyz = labels[ok], xyz[:, ok]
    sx, sy, sz = (np.bincount(labels, weights=xyz[c], minlength=n_cells) for c in range(3))
    return np.degrees(np.arctan2(sz, np.hypot(sx, sy))), np.degrees(np.arctan2(sy, sx))
