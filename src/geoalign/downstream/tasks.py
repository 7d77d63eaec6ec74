"""The five downstream tasks: labels from real reference data at reproducible land points.

All tasks start from the same seeded land points and the same spatial split, then keep the points
their data source labels; so every encoder sees the same points, the same split, per task. A built
task is cached on disk (it takes ~10 s: polygon tests, a 12960×6480 raster, 170k cities).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from geoalign.downstream.sampling import (
    DROPPED,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    LandPoints,
    SplitConfig,
    sample_land_points,
    spatial_split,
)
from geoalign.downstream.sources import (
    Source,
    altitude_m,
    country_polygons,
    era5_annual_mean_t2m,
    geonames_cities,
    koppen_geiger,
)
from geoalign.errors import GeoalignError
from geoalign.geo.distance import EARTH_RADIUS_KM
from geoalign.io_atomic import atomic_output

TASK_FORMAT_VERSION = 5
TaskKind = Literal["regression", "classification"]


@dataclass
class Task:
    """Points, labels and split of one task; `metadata` says where the labels came from."""

    name: str
    kind: TaskKind
    latlon: np.ndarray  # (N, 2) float64 degrees
    y: np.ndarray  # (N,) float32 for regression, int64 class index for classification
    split: np.ndarray  # (N,) int8: TRAIN, VAL, TEST
    target: str  # what y is, with units
    classes: list[str] | None = None
    metadata: dict = field(default_factory=dict)

    def mask(self, split: str) -> np.ndarray:
        code = {v: k for k, v in SPLIT_NAMES.items()}[split]
        return self.split == code

    def counts(self) -> dict[str, int]:
        return {name: int((self.split == code).sum()) for code, name in SPLIT_NAMES.items()}

    @property
    def metric(self) -> str:
        return "R2" if self.kind == "regression" else "accuracy"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    target: str
    description: str
    units: str
    label: Callable[[LandPoints], tuple[np.ndarray, np.ndarray, list[str] | None, list[Source]]]


# --- labelers: (points) -> (y, keep mask, class names, sources) --------------------------------


def _label_country(points: LandPoints):
    polys = country_polygons()
    names = polys.names_by_code()
    codes, y = np.unique(points.country, return_inverse=True)
    classes = [f"{c} {names.get(str(c), '')}".strip() for c in codes]
    return y.astype(np.int64), np.ones(len(y), dtype=bool), classes, [polys.source]


def _label_temperature(points: LandPoints):
    grid, src = era5_annual_mean_t2m()
    y = grid.sample(points.latlon[:, 0], points.latlon[:, 1]).astype(np.float32)
    return y, np.isfinite(y), None, [src]


def _label_koppen(points: LandPoints):
    grid, names, src = koppen_geiger()
    code = grid.sample(points.latlon[:, 0], points.latlon[:, 1]).astype(np.int64)
    valid = np.array([n not in ("", "Ocean") for n in names])
    keep = valid[code]  # coastal points the 100" raster calls ocean are dropped
    used = np.unique(code[keep])
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return remap[code], keep, [names[c] for c in used], [src]


def _label_elevation(points: LandPoints):
    grid, src = altitude_m()
    y = grid.sample(points.latlon[:, 0], points.latlon[:, 1]).astype(np.float32)
    return y, np.isfinite(y), None, [src]


POPULATION_RADIUS_KM = 50.0


def settlement_population(
    latlon: np.ndarray, radius_km: float = POPULATION_RADIUS_KM
) -> np.ndarray:
    """Sum of GeoNames populated-place populations (cities1000 table) within radius_km of each point."""
    from sklearn.neighbors import BallTree

    city_latlon, population, _ = geonames_cities()
    tree = BallTree(np.radians(city_latlon), metric="haversine")
    hits = tree.query_radius(np.radians(latlon), r=radius_km / EARTH_RADIUS_KM)
    return np.array([population[h].sum() for h in hits], dtype=np.float64)


def _label_population(points: LandPoints):
    _, _, src = geonames_cities()
    y = np.log10(1.0 + settlement_population(points.latlon)).astype(np.float32)
    return y, np.ones(len(y), dtype=bool), None, [src]


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "country",
            "classification",
            "Natural Earth admin-0 country containing the point (ISO alpha-2 code)",
            "country classification of land points",
            "class",
            _label_country,
        ),
        TaskSpec(
            "temperature",
            "regression",
            "annual-mean 2 m air temperature, °C (ERA5 2000-2025)",
            "air temperature regression",
            "°C",
            _label_temperature,
        ),
        TaskSpec(
            "koppen",
            "classification",
            "Köppen-Geiger climate zone (1986-2010 map; 31 land zones, EF and ET included)",
            "Köppen-Geiger climate class",
            "class",
            _label_koppen,
        ),
        TaskSpec(
            "elevation",
            "regression",
            "elevation above sea level, m (5' grid)",
            "elevation regression",
            "m",
            _label_elevation,
        ),
        TaskSpec(
            "population",
            "regression",
            f"log10(1 + total population of GeoNames cities within {POPULATION_RADIUS_KM:g} km)",
            "settlement population regression",
            "log10 inhabitants",
            _label_population,
        ),
    )
}


def resolve_task_names(names: str | list[str]) -> list[str]:
    """'all' or a comma list -> validated task names, in registry order for 'all'."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise GeoalignError(f"unknown task(s) {unknown}: choose from {list(TASKS)} or 'all'")
    return list(names)


# --- building and caching ----------------------------------------------------------------------


def _cache_key(
    name: str, n_points: int, seed: int, split: SplitConfig, min_class_count: int
) -> str:
    payload = json.dumps(
        [TASK_FORMAT_VERSION, name, n_points, seed, split.to_dict(), min_class_count],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_task(
    name: str,
    n_points: int = 12_000,
    seed: int = 0,
    *,
    split: SplitConfig | None = None,
    min_class_count: int = 5,
) -> Task:
    """Sample land points, label them from the task's data, split them spatially."""
    if name not in TASKS:
        raise GeoalignError(f"unknown task {name!r}: choose from {list(TASKS)}")
    spec = TASKS[name]
    split_cfg = split or SplitConfig(seed=seed)
    points = sample_land_points(n_points, seed)
    split_all = spatial_split(points.latlon, split_cfg)
    y, has_label, classes, sources = spec.label(points)
    keep = has_label & (split_all != DROPPED)
    dropped_classes: list[str] = []
    if spec.kind == "classification":
        assert classes is not None
        counts = np.bincount(y[keep], minlength=len(classes))
        rare = counts < min_class_count
        dropped_classes = [c for c, r in zip(classes, rare, strict=True) if r]
        keep &= ~rare[np.clip(y, 0, None)]
        used = np.flatnonzero(~rare)
        remap = np.full(len(classes), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        y = remap[y]
        classes = [classes[i] for i in used]
    task = Task(
        name=name,
        kind=spec.kind,
        latlon=points.latlon[keep],
        y=y[keep],
        split=split_all[keep],
        target=spec.target,
        classes=classes,
    )
    task.metadata = {
        "task": name,
        "description": spec.description,
        "target": spec.target,
        "units": spec.units,
        "kind": spec.kind,
        "sources": [s.to_dict() for s in sources],
        "sampling": {
            "n_points_requested": n_points,
            "seed": seed,
            "how": "area-uniform points inside Natural Earth admin-0 polygons, Antarctica excluded",
        },
        "split": {
            **split_cfg.to_dict(),
            "how": "equal-area Equal Earth blocks assigned to train/val/test; train and val points "
            "within buffer_km of a later split dropped",
        },
        "n_dropped_by_split_buffer": int((split_all == DROPPED).sum()),
        "n_dropped_no_label": int((~has_label & (split_all != DROPPED)).sum()),
        "min_class_count": min_class_count if spec.kind == "classification" else None,
        "classes_dropped_as_rare": dropped_classes,
        "counts": task.counts(),
        "n_classes": len(classes) if classes is not None else None,
    }
    task.metadata = json.loads(json.dumps(task.metadata))  # as the cache will return it
    return task


def default_cache_root() -> Path:
    from geoalign.paths import cache_dir

    return cache_dir() / "downstream"


def load_task(
    name: str,
    n_points: int = 12_000,
    seed: int = 0,
    *,
    split: SplitConfig | None = None,
    min_class_count: int = 5,
    cache_dir: Path | None = None,
) -> Task:
    """`build_task` with an on-disk cache keyed by every argument and the task format version."""
    split_cfg = split or SplitConfig(seed=seed)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    key = _cache_key(name, n_points, seed, split_cfg, min_class_count)
    npz, meta = root / "tasks" / f"{name}-{key}.npz", root / "tasks" / f"{name}-{key}.json"
    if npz.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        with np.load(npz) as data:
            return Task(
                name=name,
                kind=info["kind"],
                latlon=data["latlon"],
                y=data["y"],
                split=data["split"],
                target=info["target"],
                classes=info["classes"],
                metadata=info["metadata"],
            )
    task = build_task(name, n_points, seed, split=split_cfg, min_class_count=min_class_count)
    npz.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(npz) as tmp:
        np.savez(tmp, latlon=task.latlon, y=task.y, split=task.split)
    info = {
        "kind": task.kind,
        "target": task.target,
        "classes": task.classes,
        "metadata": task.metadata,
    }
    with atomic_output(meta) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return task


__all__ = [
    "TASKS",
    "TEST",
    "TRAIN",
    "VAL",
    "Task",
    "TaskSpec",
    "build_task",
    "load_task",
    "resolve_task_names",
    "settlement_population",
]
