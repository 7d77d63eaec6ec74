"""GeoSURGE's partition hierarchy: several S2 partitions, coarse to fine, that nest.

Nesting. Every partition uses the same tau_min, the same start level and the same max level; only
tau_max shrinks from coarse to fine. A cell's sample count does not depend on tau_max, so for a
finer tau_max every ancestor of a coarse cell is split again (it held more than the larger tau_max),
and the coarse cell itself is either kept whole or split further: every fine cell lies inside
exactly one coarse cell. A region dropped at a coarse level (fewer than tau_min samples) has too few
samples at every level, so it is absent from the finer ones too; the converse does not hold (a kept
coarse cell can split into children that are all too small), so the kept area shrinks from coarse to
fine and a sample can have a coarse class but no fine one. `CellHierarchy.parents` stores, for each
fine cell, its class index in every coarser partition; `nesting_report` checks the property on any
set of partitions (e.g. the published MP-16 files).

Assigning new points: a point inside a kept cell gets that cell. A point in a dropped region gets -1
(`missing="none"`, the default, so training can mask it) or the cell whose sample-mean location is
nearest on the sphere (`missing="nearest"`); each level is assigned on its own, so "nearest" labels
need not nest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geoalign.errors import DataError, shown
from geoalign.geo.s2 import ids as s2ids
from geoalign.geo.s2.partition import (
    CountPyramid,
    Partition,
    PartitionRules,
    spherical_means,
    unit_vectors,
)
from geoalign.io_atomic import atomic_output

DEFAULT_TAU_MAX = (25000, 10000, 5000, 2000, 1000, 750, 500)
FORMAT_NAME = "geoalign-s2-hierarchy"
FORMAT_VERSION = 1
PARAMS_FILE = "hierarchy.json"

Progress = Callable[[str, int, int], None]


@dataclass
class NestingReport:
    """How a finer partition sits inside a coarser one."""

    fine: str
    coarse: str
    fine_cells: int
    inside_one: int  # fine cells inside exactly one coarse cell
    outside: int  # fine cells outside every coarse cell
    straddling: int  # fine cells partly inside a coarse cell, or containing coarse cells
    coarse_split: int  # coarse cells split into several fine cells
    coarse_kept_whole: int  # coarse cells that are also a fine cell
    coarse_dropped: int  # coarse cells with no fine cell inside

    @property
    def nested(self) -> bool:
        return self.inside_one == self.fine_cells


def nesting_report(fine: Partition, coarse: Partition) -> NestingReport:
    """Check that every cell of `fine` lies inside exactly one cell of `coarse`."""
    parent = coarse.locate(fine.cell_ids)
    inside = parent >= 0
    # A fine cell not inside any coarse cell either misses them all or overlaps/contains some.
    straddle = (~inside) & (
        (coarse.covered_by(fine.cell_ids) > 0)
        | (coarse.locate(s2ids.range_min(fine.cell_ids)) >= 0)
    )
    n_children = np.bincount(parent[inside], minlength=len(coarse))
    same = np.zeros(len(coarse), dtype=bool)
    same[parent[inside]] = coarse.cell_ids[parent[inside]] == fine.cell_ids[inside]
    return NestingReport(
        fine=fine.name,
        coarse=coarse.name,
        fine_cells=len(fine),
        inside_one=int(inside.sum()),
        outside=int((~inside & ~straddle).sum()),
        straddling=int(straddle.sum()),
        coarse_split=int((n_children > 1).sum() + ((n_children == 1) & ~same).sum()),
        coarse_kept_whole=int(same.sum()),
        coarse_dropped=int((n_children == 0).sum()),
    )


class CellHierarchy:
    """Partitions from coarsest to finest, with each cell's parent class index at coarser levels.

    partitions[k] is level k (0 = coarsest). parents[k] is an (n_k, k) int64 array: column j holds
    the class index in partitions[j] of the cell containing each cell of partitions[k], or -1.
    """

    def __init__(self, partitions: Sequence[Partition], params: dict[str, Any] | None = None):
        if not partitions:
            raise ValueError("a hierarchy needs at least one partition")
        self.partitions = list(partitions)
        self.params = dict(params or {})
        self.parents = [
            np.stack([c.locate(p.cell_ids) for c in self.partitions[:k]], axis=1)
            if k
            else np.zeros((len(p), 0), dtype=np.int64)
            for k, p in enumerate(self.partitions)
        ]
        self._trees: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.partitions)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p.name}: {len(p)}" for p in self.partitions)
        return f"CellHierarchy({sizes})"

    @property
    def sizes(self) -> list[int]:
        return [len(p) for p in self.partitions]

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        lat: np.ndarray,
        lon: np.ndarray,
        tau_max: Sequence[int] = DEFAULT_TAU_MAX,
        rules: PartitionRules | None = None,
        *,
        progress: Progress | None = None,
    ) -> CellHierarchy:
        """Partition the samples (degrees) once per tau_max, coarsest (largest tau_max) first."""
        from geoalign.geo.coords import validate_latlon

        rules = rules or PartitionRules()
        taus = sorted({int(t) for t in tau_max}, reverse=True)
        if len(taus) != len(tau_max):
            raise ValueError(f"tau_max values must be distinct, got {list(tau_max)}")
        if taus[-1] < rules.tau_min:
            raise ValueError(f"every tau_max must be >= tau_min={rules.tau_min}, got {taus[-1]}")
        lat, lon = validate_latlon(lat, lon, source="samples")
        n = lat.size
        leaf = s2ids.latlon_to_cell_ids(
            lat, lon, progress=(lambda d: progress("cell ids", d, n)) if progress else None
        )
        pyramid = CountPyramid.build(
            leaf,
            rules,
            split_above=taus[-1],
            progress=(lambda lv: progress("count cells", lv + 1, rules.max_level + 1))
            if progress
            else None,
        )
        xyz = unit_vectors(lat, lon)
        partitions = []
        n_assigned = []
        for k, tau in enumerate(taus):
            cells, counts = pyramid.partition(tau)
            part = Partition(cells, counts, np.zeros(len(cells)), np.zeros(len(cells)))
            labels = part.locate_leaves(leaf)
            if not np.array_equal(np.bincount(labels[labels >= 0], minlength=len(part)), counts):
                raise AssertionError("internal error: cell counts disagree with point lookup")
            lat_mean, lon_mean = spherical_means(labels, xyz, len(part))
            part = Partition(cells, counts, lat_mean, lon_mean, tau_max=tau, name=f"tau{tau}")
            partitions.append(part)
            n_assigned.append(int((labels >= 0).sum()))
            if progress:
                progress("partitions", k + 1, len(taus))
        params = {
            **asdict(rules),
            "tau_max": taus,
            "n_samples": int(n),
            "n_assigned": n_assigned,
        }
        return cls(partitions, params)

    # ------------------------------------------------------------------ assigning

    def assign_leaf_ids(
        self,
        leaf_ids: np.ndarray,
        *,
        missing: Literal["none", "nearest"] = "none",
        lat: np.ndarray | None = None,
        lon: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, levels) class indices for precomputed leaf cell ids (see `assign`)."""
        leaf_ids = np.asarray(leaf_ids, dtype=np.uint64)
        out = np.empty((leaf_ids.size, len(self)), dtype=np.int64)
        for k, part in enumerate(self.partitions):
            out[:, k] = part.locate_leaves(leaf_ids)
        if missing == "nearest":
            if lat is None or lon is None:
                lat, lon = s2ids.cell_centers(leaf_ids)
            for k in range(len(self)):
                gap = np.flatnonzero(out[:, k] < 0)
                if gap.size:
                    out[gap, k] = self.nearest(k, lat[gap], lon[gap])
        elif missing != "none":
            raise ValueError(f"missing must be 'none' or 'nearest', got {missing!r}")
        return out

    def assign(
        self,
        lat,
        lon,
        *,
        missing: Literal["none", "nearest"] = "none",
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Class index per level for each point: an (N, levels) int64 array.

        missing="none" gives -1 where a point lies in a dropped region; "nearest" gives the cell
        whose sample-mean location is nearest (great circle).
        """
        from geoalign.geo.coords import validate_latlon

        lat, lon = validate_latlon(lat, lon, source="points")
        leaf = s2ids.latlon_to_cell_ids(lat, lon, progress=progress)
        return self.assign_leaf_ids(leaf, missing=missing, lat=lat, lon=lon)

    def nearest(self, level: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Class index at `level` of the cell whose mean location is nearest to each point."""
        from sklearn.neighbors import KDTree

        part = self.partitions[level]
        if len(part) == 0:
            return np.full(np.shape(lat), -1, dtype=np.int64)
        if level not in self._trees:
            # Chord distance between unit vectors is monotonic in great-circle distance.
            self._trees[level] = KDTree(unit_vectors(part.lat_mean, part.lon_mean).T)
        _, idx = self._trees[level].query(unit_vectors(np.asarray(lat), np.asarray(lon)).T, k=1)
        return idx[:, 0].astype(np.int64)

    def chain(self, fine_index: np.ndarray, level: int | None = None) -> np.ndarray:
        """(N, levels) class indices along the hierarchy for cells of partition `level` (default
        finest): the coarser columns are the parents, the last column is the input."""
        level = len(self) - 1 if level is None else level
        fine_index = np.asarray(fine_index, dtype=np.int64)
        return np.concatenate([self.parents[level][fine_index], fine_index[:, None]], axis=1)

    def nesting(self) -> list[NestingReport]:
        """Reports for every (finer, coarser) pair."""
        return [
            nesting_report(self.partitions[k], self.partitions[j])
            for k in range(1, len(self))
            for j in range(k)
        ]

    # ------------------------------------------------------------------ tables and files

    def frame(self, level: int):
        """The cells of one level as a pandas DataFrame (the Parquet layout).

        class_index is the row (the embedding/classifier index); label is the class label as
        published (equal to class_index for partitions built here); parent_j is the class index of
        the containing cell at coarser level j (-1: none).
        """
        import pandas as pd

        p = self.partitions[level]
        data: dict[str, Any] = {
            "class_index": np.arange(len(p), dtype=np.int64),
            "label": p.labels,
            "token": p.tokens,
            "cell_id": p.cell_ids,
            "s2_level": p.levels.astype(np.int8),
            "count": p.counts,
            "lat_mean": p.lat_mean,
            "lon_mean": p.lon_mean,
        }
        for j in range(level):
            data[f"parent_{j}"] = self.parents[level][:, j]
        return pd.DataFrame(data)

    def save(self, directory: str | Path) -> Path:
        """Write partition_<k>.parquet per level and hierarchy.json with the parameters."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for k, p in enumerate(self.partitions):
            name = f"partition_{k}.parquet"
            with atomic_output(directory / name) as tmp:
                self.frame(k).to_parquet(tmp, index=False)
            files.append({"file": name, "name": p.name, "tau_max": p.tau_max, "cells": len(p)})
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "params": self.params,
            "levels": files,
        }
        with atomic_output(directory / PARAMS_FILE) as tmp:  # last: it lists the files above
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CellHierarchy:
        """Read a hierarchy written by `save`, checking ids, tokens and parent links."""
        import pandas as pd

        directory = Path(directory)
        meta_path = directory / PARAMS_FILE
        if not meta_path.is_file():
            raise DataError(f"{directory}: no {PARAMS_FILE} (not a cell hierarchy folder)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{meta_path}: invalid JSON: {err}") from None
        if meta.get("format") != FORMAT_NAME:
            raise DataError(f"{meta_path}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
        partitions = []
        stored_parents = []
        for k, entry in enumerate(meta["levels"]):
            path = directory / entry["file"]
            if not path.is_file():
                raise DataError(f"{path}: missing (listed in {meta_path})")
            df = pd.read_parquet(path)
            need = {"class_index", "token", "cell_id", "count", "lat_mean", "lon_mean"}
            if need - set(df.columns):
                raise DataError(f"{path}: missing columns {sorted(need - set(df.columns))}")
            if not np.array_equal(df["class_index"].to_numpy(), np.arange(len(df))):
                raise DataError(f"{path}: class_index is not 0..{len(df) - 1} in order")
            cell_ids = df["cell_id"].to_numpy(np.uint64)
            bad = np.flatnonzero(~s2ids.is_valid_id(cell_ids))
            if bad.size:
                raise DataError(f"{path}: row {bad[0]}: invalid S2 cell id {cell_ids[bad[0]]}")
            tokens = s2ids.ids_to_tokens(cell_ids)
            wrong = [i for i, (a, b) in enumerate(zip(tokens, df["token"], strict=True)) if a != b]
            if wrong:
                i = wrong[0]
                raise DataError(
                    f"{path}: row {i}: token {shown(df['token'][i])} != cell id {tokens[i]}"
                )
            part = Partition(
                cell_ids,
                df["count"].to_numpy(),
                df["lat_mean"].to_numpy(),
                df["lon_mean"].to_numpy(),
                tau_max=entry.get("tau_max"),
                name=entry.get("name", f"level{k}"),
                labels=df["label"].to_numpy(np.int64) if "label" in df.columns else None,
            )
            if part.overlaps().size:
                raise DataError(f"{path}: rows {part.overlaps()[:2].tolist()} overlap")
            partitions.append(part)
            stored_parents.append(
                np.stack([df[f"parent_{j}"].to_numpy(np.int64) for j in range(k)], axis=1)
                if k
                else None
            )
        hierarchy = cls(partitions, meta.get("params", {}))
        for k in range(1, len(partitions)):
            if not np.array_equal(stored_parents[k], hierarchy.parents[k]):
                raise DataError(f"{directory / meta['levels'][k]['file']}: parent columns disagree")
        return hierarchy
