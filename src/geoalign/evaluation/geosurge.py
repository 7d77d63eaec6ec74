"""Report rows for a GeoSURGE checkpoint, from precomputed backbone features.

GeoSURGE ranks its own finest geocells by hierarchical inference, so no GPS gallery is searched:
the cells are the gallery. Two prediction modes, with the same meaning as GeoCLIP's
(`evaluation.harness.evaluate_model`):
- "top1": the most probable finest cell (what `models.geosurge.evaluate_geosurge` reports);
- "mode": mode seeking (`evaluation.modes.ModeSeeker`) over the finest cells' hierarchical
  probabilities, with the cells' coordinates as the gallery: the cell whose `radius_km`
  neighbourhood holds the most probability mass. A flat distribution over many small cells of
  one region then still lands in that region instead of on its single luckiest cell.
A cell's coordinates are the model's (the mean training coordinate, or a GPS gallery point for
models saved with coordinates="gallery").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from geoalign.errors import DataError
from geoalign.evaluation.harness import MethodResult
from geoalign.geo.coords import as_latlon_array
from geoalign.models.geosurge import METHOD, GeoSurge, GeoSurgeLocator


def _config_json(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p.parent / "config.json" if p.name == "model.safetensors" else p / "config.json"


def is_geosurge_checkpoint(path: str | Path) -> bool:
    """True when `path` is a checkpoint folder whose config.json says `"method": "geosurge"`.
    Reads only that small JSON file (no weights, no torch work); False for anything else."""
    try:
        config = json.loads(_config_json(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("method") == METHOD


def load_feature_locator(model: str | Path, device: str = "cpu") -> GeoSurgeLocator:
    """A `GeoSurgeLocator` for a checkpoint that reads precomputed features (no backbone loaded).

    Fails with the reason for checkpoints that are not GeoSURGE or that read photos (the
    backbone/fusion variants train a backbone block, so fixed features cannot stand in)."""
    if not is_geosurge_checkpoint(model):
        raise DataError(f"{model}: not a GeoSURGE checkpoint (config.json must say geosurge)")
    config = json.loads(_config_json(model).read_text()).get(METHOD) or {}
    visual = config.get("visual", "features")
    if visual != "features":
        raise DataError(
            f"{model}: this GeoSURGE model (visual {visual!r}) reads photos, not precomputed "
            "features: evaluate it on the photos (models.geosurge.evaluate_geosurge(images=...))"
        )
    net = GeoSurge.load(model, device=device)
    gallery = None
    if net.config.coordinates == "gallery":
        from geoalign.data.galleries import load_gallery

        gallery = load_gallery("geoclip-100k")  # what GeoSurgeLocator.from_pretrained reads
    return GeoSurgeLocator(net, gallery=gallery)


def _cell_coordinates(locator: GeoSurgeLocator, cells: np.ndarray) -> np.ndarray:
    """(N, 2) coordinates of finest cells, as the locator reports them."""
    if locator.refiner is not None:
        return locator.refiner.refine(cells[:, None])[0][:, 0]
    return locator.model.cell_latlon[cells]


def geosurge_results(
    model: str | Path | GeoSurgeLocator,
    features: torch.Tensor | np.ndarray,
    truth: np.ndarray,
    *,
    name: str,
    modes: Sequence[str] = ("top1", "mode"),
    radius_km: float = 750.0,
    device: str = "cpu",
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[MethodResult]:
    """One MethodResult per mode ("top1", "mode") for a GeoSURGE checkpoint folder (or a
    `GeoSurgeLocator`) on backbone features [N, D] ([N, crops, D]: the crops' queries are
    averaged, which averages every level's logits) against ground truth (N, 2)."""
    from geoalign.evaluation.modes import MODES, ModeSeeker

    unknown = set(modes) - set(MODES)
    if unknown:
        raise DataError(f"unknown prediction mode(s) {sorted(unknown)}; known: {list(MODES)}")
    truth = as_latlon_array(truth, source="ground truth")
    feats = torch.as_tensor(features if torch.is_tensor(features) else np.asarray(features))
    if feats.dim() not in (2, 3):
        raise DataError(f"features must be [N, D] or [N, crops, D], got {tuple(feats.shape)}")
    if len(feats) != len(truth):
        raise DataError(f"{len(feats)} query feature rows but {len(truth)} ground-truth rows")
    start = time.perf_counter()
    locator = model if isinstance(model, GeoSurgeLocator) else load_feature_locator(model, device)
    net = locator.model
    want = net.config.feature_dim
    if want is not None and feats.shape[-1] != want:
        raise DataError(
            f"{getattr(net, 'source', 'the GeoSURGE model')}: it reads {want}-d features "
            f"({net.config.backbone or 'backbone not recorded'}), the queries are "
            f"{feats.shape[-1]}-d"
        )
    seeker = ModeSeeker(net.cell_latlon, radius_km) if "mode" in modes else None
    cell = {m: np.empty(len(truth), dtype=np.int64) for m in modes}
    prob = {m: np.empty(len(truth)) for m in modes}
    seconds = {m: 0.0 for m in modes}
    shared = time.perf_counter() - start
    for s in range(0, len(feats), batch_size):
        t = time.perf_counter()
        chunk = feats[s : s + batch_size].float()
        q = locator.embed_features(chunk.flatten(0, 1) if chunk.dim() == 3 else chunk)
        if chunk.dim() == 3:
            q = q.view(chunk.shape[0], chunk.shape[1], -1).mean(1)
        with torch.no_grad():  # not inference_mode: the model caches its unit tables by version
            probs = torch.softmax(net.cell_log_scores(q), dim=-1).cpu()
        shared += time.perf_counter() - t
        rows = slice(s, s + len(chunk))
        if "top1" in modes:
            t = time.perf_counter()
            best, idx = probs.max(dim=-1)
            cell["top1"][rows], prob["top1"][rows] = idx.numpy(), best.numpy()
            seconds["top1"] += time.perf_counter() - t
        if seeker is not None:
            t = time.perf_counter()
            idx, mass = seeker.select(probs)
            cell["mode"][rows], prob["mode"][rows] = idx.numpy(), mass.numpy()
            seconds["mode"] += time.perf_counter() - t
        if progress is not None:
            progress(len(chunk))
    where = f"coordinates: cell {locator.coordinates}"
    out = []
    for m in modes:
        if m == "top1":
            label, note = f"{name} (top-1 cell)", "p = hierarchical probability of the cell"
        else:
            label, note = f"{name} (mode, {radius_km:g} km)", f"p = mass within {radius_km:g} km"
        out.append(
            MethodResult.from_predictions(
                label,
                "model",
                _cell_coordinates(locator, cell[m]),
                truth,
                mode=m,
                prob=prob[m],
                seconds=shared + seconds[m],
                notes=f"{note}; {where}",
            )
        )
    return out
