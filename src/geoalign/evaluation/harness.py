"""Run any model, or a baseline, over query features against any GPS gallery.

Queries are backbone features ([N, D], or [N, crops, D] for ten-crop), ground truth is (N, 2)
lat/lon, and the gallery is a named gallery (the official 100K), a file, or coordinates sampled
from a training set. A model needs `encode_images`, `encode_locations` (or a `location_encoder`)
and a logit scale (`scale()` or `logit_scale`, the log of exp-scale as GeoCLIP stores it).

Ten-crop follows the official GeoCLIP code: logits are averaged over crops, which equals the logit
of the mean of the crops' L2-normalised embeddings (the product is linear), so the mean embedding
is searched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


def _logit_scale(model: Any) -> float:
    if hasattr(model, "scale") and callable(model.scale):
        return float(model.scale().detach().exp())
    return float(torch.as_tensor(model.logit_scale).detach().exp())


def _param(model: Any) -> torch.Tensor:
    return next(model.parameters())


@torch.inference_mode()
def gallery_embeddings(model: Any, gallery: np.ndarray, *, cache: bool = False) -> torch.Tensor:
    """[M, E] float32 gallery embeddings (cached on disk per encoder and gallery when asked)."""
    encoder = getattr(model, "location_encoder", None)
    if encoder is not None:
        from geoalign.gallery_cache import gallery_embeddings as cached

        return cached(encoder, gallery, cache=cache).float()
    coords = torch.as_tensor(gallery, dtype=torch.float32, device=_param(model).device)
    return torch.cat([model.encode_locations(c).float().cpu() for c in coords.split(4096)])


@torch.inference_mode()
def query_embeddings(model: Any, features: Any, batch_size: int = 2048) -> torch.Tensor:
    """[N, E] unit (or, for ten-crop, crop-averaged unit) query embeddings."""
    feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    param = _param(model)
    out = []
    for chunk in feats.split(batch_size):
        emb = model.encode_images(chunk.to(param.device, torch.float32)).float()
        emb = F.normalize(emb, dim=-1)
        out.append((emb.mean(dim=1) if emb.dim() == 3 else emb).cpu())
    return torch.cat(out)


def evaluate_model(
    model: Any,
    features: Any,
    truth: np.ndarray,
    gallery: np.ndarray,
    *,
    name: str = "model",
    modes: Sequence[str] = ("top1", "mode"),
    radius_km: float = 750.0,
    batch_size: int = 256,
    cache_gallery: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[MethodResult]:
    """One MethodResult per prediction mode ("top1", "mode")."""
    from geoalign.evaluation.modes import MODES, ModeSeeker
    from geoalign.search import GallerySearch

    unknown = set(modes) - set(MODES)
    if unknown:
        raise DataError(f"unknown prediction mode(s) {sorted(unknown)}; known: {list(MODES)}")
    truth = as_latlon_array(truth, source="ground truth")
    gallery = as_latlon_array(gallery, source="gallery")
    if len(features) != len(truth):
        raise DataError(f"{len(features)} query feature rows but {len(truth)} ground-truth rows")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    g_emb = gallery_embeddings(model, gallery, cache=cache_gallery)
    q_emb = query_embeddings(model, features)
    scale = _logit_scale(model)
    t_embed = time.perf_counter() - start
    search = GallerySearch(g_emb, scale)
    g_unit = search.embeddings
    seeker = ModeSeeker(gallery, radius_km) if "mode" in modes else None
    idx = {m: np.empty(len(truth), dtype=np.int64) for m in modes}
    prob = {m: np.empty(len(truth)) for m in modes}
    t_mode = {m: 0.0 for m in modes}
    for s in range(0, len(truth), batch_size):
        q = q_emb[s : s + batch_size]
        if "top1" in modes:
            t = time.perf_counter()
            res = search.topk(q, k=1)
            idx["top1"][s : s + len(q)] = res.indices[:, 0].numpy()
            prob["top1"][s : s + len(q)] = res.probs[:, 0].numpy()
            t_mode["top1"] += time.perf_counter() - t
        if seeker is not None:
            t = time.perf_counter()
            probs = torch.softmax(scale * (q @ g_unit.T), dim=-1)
            best, mass = seeker.select(probs)
            idx["mode"][s : s + len(q)] = best.numpy()
            prob["mode"][s : s + len(q)] = mass.numpy()
            t_mode["mode"] += time.perf_counter() - t
        if progress is not None:
            progress(len(q))
    model.train(was_training)
    out = []
    for m in modes:
        label = f"{name} (top-1)" if m == "top1" else f"{name} (mode, {radius_km:g} km)"
        note = "p = top-1 probability" if m == "top1" else f"p = mass within {radius_km:g} km"
        out.append(
            MethodResult.from_predictions(
                label,
                "model",
                gallery[idx[m]],
                truth,
                mode=m,
                prob=prob[m],
                seconds=t_embed + t_mode[m],
                notes=note,
            )
        )
    return out


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
