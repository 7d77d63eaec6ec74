"""Run any model, or a baseline, over query features against any GPS gallery.

Queries are backbone features ([N, D], or [N, crops, D] for ten-crop), ground truth is (N, 2)
lat/lon, and the gallery is a named gallery (the official 100K), a file, or coordinates sampled
from a training set. Any method that implements `geoalign.models.base.Locator` is evaluated by
the same code: GeoCLIP-style models over the gallery, GeoSURGE over its own cells.

Ten-crop follows the official GeoCLIP code: logits are averaged over crops, which equals the logit
of the mean of the crops' queries (the logits are linear in them), so the mean query is ranked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geoalign.errors import DataError
from geoalign.geo.coords import as_latlon_array
from geoalign.geo.distance import haversine_km
from geoalign.geo.metrics import summarize_errors


@dataclass
class MethodResult:
    """One row of a report: a method's predictions and their metrics."""

    name: str
    kind: str  # "model" or "baseline"
    latlon: np.ndarray
    dist_km: np.ndarray
    metrics: dict[str, float]
    mode: str | None = None
    prob: np.ndarray | None = None
    seconds: float = 0.0
    notes: str = ""
    coverage: dict[str, float] | None = None  # region p -> fraction of truths inside; areas
    probabilistic: dict[str, Any] | None = None  # see evaluation.probabilistic (first row)

    @classmethod
    def from_predictions(
        cls, name: str, kind: str, pred: np.ndarray, truth: np.ndarray, **kwargs: Any
    ) -> MethodResult:
        d = haversine_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1])
        return cls(name, kind, pred, d, summarize_errors(d), **kwargs)


@dataclass
class Evaluation:
    benchmark: str
    ids: np.ndarray
    truth: np.ndarray
    gallery: str
    gallery_size: int
    results: list[MethodResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> MethodResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


# --- galleries ---------------------------------------------------------------------------------------


def make_gallery(
    spec: str, train_coords: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """(M, 2) gallery coordinates and a description.

    spec: a named gallery ("geoclip-100k"), a CSV/Parquet file with lat/lon columns, or
    "train:N" -- N coordinates sampled (without replacement, fixed seed) from `train_coords`,
    the way GeoCLIP built its 100K gallery from MP-16."""
    if spec.startswith("train:"):
        if train_coords is None:
            raise DataError(f"gallery {spec!r} samples training coordinates: none were given")
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError as err:
            raise DataError(f"gallery {spec!r}: expected train:N with an integer N") from err
        coords = as_latlon_array(train_coords, source="training coordinates")
        n = min(n, len(coords))
        rows = np.random.default_rng(seed).choice(len(coords), size=n, replace=False)
        return coords[np.sort(rows)], f"{n} training coordinates (sampled, seed {seed})"
    from geoalign.data.galleries import load_gallery

    frame = load_gallery(spec)
    return frame[["lat", "lon"]].to_numpy(np.float64), f"{spec} ({len(frame)} coordinates)"


# --- models -------------------------------------------------------------------------------------------


def evaluate_model(
    model: Any,
    features: Any,
    truth: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    name: str = "model",
    modes: Sequence[str] = ("top1", "mode"),
    radius_km: float = 750.0,
    batch_size: int = 256,
    cache_gallery: bool = False,
    progress: Callable[[int], None] | None = None,
    regions: Sequence[float] = (),
    probabilistic: bool = False,
    seed: int = 0,
    prior_radius_km: float | None = None,
    queries: torch.Tensor | None = None,
    calibration: Any = None,
) -> list[MethodResult]:
    """One MethodResult per prediction mode for any method: "top1", "mode" (mass within
    `radius_km`), "mean", "median" (estimates of the distribution, `inference.distribution`).
    `regions` (e.g. (0.5, 0.9)): the first row also gets the coverage of those regions (the
    fraction of true locations inside) and their median area; `probabilistic`: the first row
    also gets `evaluation.probabilistic` summaries (reliability, risk-coverage, recall vs area,
    verify false alarms and power; moved claims drawn with `seed`). `prior_radius_km` (GeoCLIP
    Table 5): each query's candidates are restricted to those within that distance of its true
    location (prior knowledge of the continent, country, state or city); top-1 and mode only.

    `model`: a `Locator` (GeoCLIP, concept-aware, GeoSURGE: ranked through a
    `geoalign.inference.Geolocator` over `gallery`, which cell classifiers need only to refine
    coordinates) or a ready `Geolocator`. Features [N, D] or [N, crops, D] (crops averaged).
    The queries, the candidates, the temperature and the softmax are `Geolocator`'s, so
    `predict` and `evaluate` give the same probabilities for the same model and inputs;
    `calibration` (the checkpoint's, as `Geolocator.from_pretrained` applies it) for a model
    given as a `Locator`."""
    from geoalign.evaluation.probabilistic import ProbabilisticStats
    from geoalign.inference.distribution import ESTIMATES as MODES
    from geoalign.inference.distribution import check_p
    from geoalign.inference.locator import Geolocator
    from geoalign.inference.modes import ModeSeeker

    regions = [check_p(p) for p in regions]
    if prior_radius_km is not None:
        if not prior_radius_km > 0:
            raise DataError(f"prior radius must be positive, got {prior_radius_km:g} km")
        if set(modes) - {"top1", "mode"} or regions or probabilistic:
            raise DataError("a per-query prior radius supports the top1 and mode rows only")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise DataError(f"unknown prediction mode(s) {sorted(unknown)}; known: {list(MODES)}")
    truth = as_latlon_array(truth, source="ground truth")
    if queries is not None:
        feats = queries
    else:
        feats = torch.as_tensor(features if torch.is_tensor(features) else np.asarray(features))
        if feats.dim() not in (2, 3):
            raise DataError(f"features must be [N, D] or [N, crops, D], got {tuple(feats.shape)}")
    if len(feats) != len(truth):
        raise DataError(f"{len(feats)} query rows but {len(truth)} ground-truth rows")
    start = time.perf_counter()
    if isinstance(model, Geolocator):
        geo, net = model, model.model
    else:
        net = model
        if gallery is not None:
            gallery = as_latlon_array(gallery, source="gallery")
    if net.reads != "features" and queries is None:
        raise DataError(
            f"this {net.method} model reads {net.reads} (it trains a backbone block), not "
            "precomputed features: evaluate it on the photos"
        )
    was_training = net.training
    try:
        if not isinstance(model, Geolocator):
            geo = Geolocator(net, gallery=gallery, cache=cache_gallery, calibration=calibration)
        cands = geo.candidates
        seeker = ModeSeeker(cands.latlon, radius_km) if "mode" in modes else None
        idx = {m: np.empty(len(truth), dtype=np.int64) for m in modes}
        prob = {m: np.empty(len(truth)) for m in modes}
        point = {m: np.empty((len(truth), 2)) for m in modes if m in ("mean", "median")}
        inside = {p: np.zeros(len(truth), dtype=bool) for p in regions}
        stats = ProbabilisticStats.empty(len(truth)) if probabilistic else None
        rng = np.random.default_rng(seed)
        area = {p: np.empty(len(truth)) for p in regions}
        seconds = {m: 0.0 for m in modes}
        shared = time.perf_counter() - start
        for s in range(0, len(truth), batch_size):
            t = time.perf_counter()
            chunk = feats[s : s + batch_size]
            q = chunk if queries is not None else geo.embed_features(chunk)
            shared += time.perf_counter() - t
            rows = slice(s, s + len(q))
            if prior_radius_km is not None:
                t = time.perf_counter()
                near = _within(truth[rows], cands.latlon, prior_radius_km)
                lp = geo.log_probs(q, near)
                if "top1" in modes:
                    best_p, best = lp.max(dim=-1)
                    idx["top1"][rows], prob["top1"][rows] = best.numpy(), best_p.exp().numpy()
                if seeker is not None:
                    best, mass = seeker.select(lp.exp())
                    idx["mode"][rows], prob["mode"][rows] = best.numpy(), mass.numpy()
                for m in modes:
                    seconds[m] += (time.perf_counter() - t) / len(modes)
                if progress is not None:
                    progress(len(q))
                continue
            if "top1" in modes:
                t = time.perf_counter()
                top, p = geo.topk(q, 1)
                idx["top1"][rows], prob["top1"][rows] = top[:, 0], p[:, 0]
                seconds["top1"] += time.perf_counter() - t
            if seeker is not None:
                t = time.perf_counter()
                best, mass = seeker.select(geo.log_probs(q).exp())
                idx["mode"][rows], prob["mode"][rows] = best.numpy(), mass.numpy()
                seconds["mode"] += time.perf_counter() - t
            if point or regions or stats is not None:
                t = time.perf_counter()
                dists = geo.distributions(q, radius_km=radius_km)
                if stats is not None:
                    stats.fill(rows, dists, truth, rng)
                for j, dist in enumerate(dists, start=s):
                    for m in point:
                        point[m][j] = dist.estimate(m)
                    for p in regions:
                        inside[p][j] = dist.level_of(truth[j : j + 1])[0] <= p
                        area[p][j] = dist.region(p, countries=False).area_km2
                each = (time.perf_counter() - t) / max(1, len(point))
                for m in point:
                    seconds[m] += each
            if progress is not None:
                progress(len(q))
    finally:
        net.train(was_training)
    cells = cands.kind == "cells"
    where = f"; coordinates: cell {geo.coordinates}" if cells else ""
    if prior_radius_km is not None:
        where += f"; candidates within {prior_radius_km:g} km of the truth (Table 5 protocol)"
        name = f"{name}, prior {prior_radius_km:g} km"
    out = []
    for m in modes:
        if m == "top1":
            label = f"{name} (top-1 cell)" if cells else f"{name} (top-1)"
            note = "p = hierarchical probability of the cell" if cells else "p = top-1 probability"
        elif m == "mode":
            label, note = f"{name} (mode, {radius_km:g} km)", f"p = mass within {radius_km:g} km"
        else:
            label = f"{name} ({m})"
            note = "posterior mean direction" if m == "mean" else "spherical geometric median"
        latlon = point[m] if m in point else geo.coordinates_of(idx[m][:, None])[:, 0]
        out.append(
            MethodResult.from_predictions(
                label,
                "model",
                latlon,
                truth,
                mode=m,
                prob=prob.get(m) if m not in point else None,
                seconds=shared + seconds[m],
                notes=note + where,
            )
        )
    if stats is not None and out:
        by_mode = {r.mode: r for r in out}
        errors = by_mode.get("median", out[0]).dist_km
        out[0].probabilistic = stats.summary(errors)
    if regions and out:
        out[0].coverage = {
            **{f"coverage@{p:g}": float(inside[p].mean()) for p in regions},
            **{f"median_area_km2@{p:g}": float(np.median(area[p])) for p in regions},
        }
    return out


def evaluate_photos(
    geo: Any,
    images: Sequence[Any],
    truth: np.ndarray,
    *,
    ten_crop: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
    prior_radii_km: Sequence[float] = (),
    **kwargs: Any,
) -> tuple[list[MethodResult], np.ndarray, list[tuple[str, str]]]:
    """`evaluate_model` from photos, for every method and variant: queries by the Geolocator's
    image side (the frozen backbone, or the trained block and the segmenter), ten-crop as
    published (the crops' queries averaged). `prior_radii_km`: also GeoCLIP's Table 5 rows on
    the same queries. Returns (rows, positions of the photos evaluated, (path, reason) of the
    unreadable ones, which are left out)."""
    truth = as_latlon_array(truth, source="ground truth")
    if len(images) != len(truth):
        raise DataError(f"{len(images)} photos but {len(truth)} ground-truth rows")
    queries, kept, failed = geo.embed_images(
        images, ten_crop=ten_crop, batch_size=batch_size, num_workers=num_workers, on_batch=on_batch
    )
    rows = evaluate_model(geo, None, truth[kept], queries=queries, **kwargs)
    prior_modes = [m for m in kwargs.get("modes", ["top1"]) if m in ("top1", "mode")] or ["top1"]
    for radius in prior_radii_km:
        rows += evaluate_model(
            geo,
            None,
            truth[kept],
            queries=queries,
            **{**kwargs, "modes": prior_modes, "probabilistic": False},
            prior_radius_km=float(radius),
        )
    return rows, kept, failed


def _within(truth: np.ndarray, latlon: np.ndarray, radius_km: float) -> torch.Tensor:
    """[b, M] mask: candidates within `radius_km` of each query's true location (a query with
    none keeps its nearest candidate, so every row has one)."""
    from geoalign.geo.distance import pairwise_haversine_km

    d = pairwise_haversine_km(truth, latlon)
    mask = d <= radius_km
    empty = ~mask.any(axis=1)
    mask[empty, d[empty].argmin(axis=1)] = True
    return torch.from_numpy(mask)


def evaluate_baselines(
    baselines: Sequence[Any],
    train_features: Any,
    train_coords: np.ndarray,
    features: Any,
    truth: np.ndarray,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[MethodResult]:
    """Fit each baseline on the training features, predict the queries."""
    truth = as_latlon_array(truth, source="ground truth")
    out = []
    for b in baselines:
        if progress is not None:
            progress(b.name)
        start = time.perf_counter()
        pred = b.fit(train_features, train_coords).predict(features)
        out.append(
            MethodResult.from_predictions(
                b.name, "baseline", np.asarray(pred), truth, seconds=time.perf_counter() - start
            )
        )
    return out
