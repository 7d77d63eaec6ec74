"""The model side of the service: one `Geolocator`, loaded once per worker process, and the
turn from backbone queries into prediction records, GeoJSON and verdicts.

Everything here that touches torch runs in the one model thread (`Engine.executor`): the
backbone batches (`embed`) and the per-request ranking (`finish`) take turns, so a model that
caches state between calls (GeoSURGE) never sees two threads at once.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geoalign.errors import DataError
from geoalign.inference.distribution import ESTIMATES
from geoalign.inference.locator import MIN_SEPARATION_KM
from geoalign.inference.prediction import Prediction, describe
from geoalign.inference.verify import verify_claim
from geoalign.serve.config import ServeConfig
from geoalign.serve.uploads import Decoded

log = logging.getLogger("geoalign.serve.engine")


@dataclass
class Options:
    """What one request asks for (validated by the app before it gets here)."""

    top_k: int = 5
    estimate: str | None = None
    regions: tuple[float, ...] = ()
    prior: Any = None
    geojson: bool = False
    check_exif: bool = False
    alpha: float = 0.05
    claimed: tuple[float, float] | None = None
    verify: bool = False  # /v1/verify: a verdict per image is the point of the request
    extras: dict[str, Any] = field(default_factory=dict)


def record_settings(config: ServeConfig, top_k: int, prior: Any) -> dict[str, Any]:
    """The settings field of a record, key for key what `geoalign predict` writes for the same
    model, backbone, gallery and options (file paths made absolute, as the CLI does)."""
    options: dict[str, Any] = {
        "model": config.model,
        "backbone": config.backbone,
        "gallery": config.gallery,
    }
    for key in ("model", "gallery", "backbone"):
        value = options[key]
        spec = value.split(":", 1)[1] if key == "backbone" and ":" in value else value
        if Path(spec).exists():
            options[key] = value.replace(spec, str(Path(spec).resolve()))
    return {
        **options,
        "top_k": top_k,
        "prior": None if prior is None else str(prior),
        "ten_crop": False,
        "places": config.places,
        "bf16": False,
        "half_gallery": False,
        "estimate": None,
        "regions": None,
        "abstain_above_km": None,
        "min_separation_km": MIN_SEPARATION_KM,
    }


class Engine:
    """A loaded model with the batching-friendly calls the app needs."""

    def __init__(self, geolocator: Any, config: ServeConfig, card: dict[str, Any]) -> None:
        if geolocator.backbone is None:
            raise DataError("the service reads photos: the model needs a backbone")
        self.geo = geolocator
        self.config = config
        self.card = card
        self.transform = geolocator.backbone.transform
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoalign-model")
        self._masks: OrderedDict[str, torch.Tensor | None] = OrderedDict()

    @classmethod
    def load(cls, config: ServeConfig) -> Engine:
        """Load the model, backbone and gallery named in `config` (the slow part of start-up)."""
        from geoalign.inference.locator import Geolocator
        from geoalign.models.registry import checkpoint_config

        geo = Geolocator.from_pretrained(
            config.model, backbone=config.backbone, gallery=config.gallery, device=config.device
        )
        engine = cls(geo, config, model_card(config, checkpoint_config(config.model), geo))
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """One blank photo through the whole path, so that /readyz means the first request
        pays no lazy loading (the place index, the smoothing grid, the mode seeker)."""
        from PIL import Image

        pixels = self.transform(Image.new("RGB", (64, 64), (128, 128, 128)))
        decoded = [Decoded("warm-up", pixels=pixels)]
        self.finish(decoded, list(self.embed(pixels[None])), Options(top_k=1, regions=(0.5,)))

    # -- model thread ----------------------------------------------------------------------------
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, E] queries (the batched backbone pass)."""
        return self.geo.embed_pixels(pixels.to(self.config.device)).cpu()

    def mask(self, prior: Any) -> torch.Tensor | None:
        """The candidate mask of a prior, cached for the few priors a service sees again."""
        if prior is None:
            return None
        key = str(prior)
        if key not in self._masks:
            self._masks[key] = self.geo.prior_mask(prior)
            if len(self._masks) > 32:
                self._masks.popitem(last=False)
        self._masks.move_to_end(key)
        return self._masks[key]

    def finish(
        self, decoded: list[Decoded], queries: list[torch.Tensor], options: Options
    ) -> list[dict[str, Any]]:
        """One result per upload, in order: the prediction record (schema
        geoalign.prediction/v1, settings as the CLI writes them) and, when asked, its GeoJSON and
        the claim check. Unreadable uploads get the record's error form."""
        settings = record_settings(self.config, options.top_k, options.prior)
        settings["estimate"] = options.estimate
        settings["regions"] = list(options.regions) or None
        mask = self.mask(options.prior)
        readable = [d for d in decoded if d.pixels is not None]
        by_name: dict[int, dict[str, Any]] = {}
        if readable:
            q = torch.stack(queries)
            ranked = self.geo.rank(q, top_k=options.top_k, mask=mask, places=self.config.places)
            needs_dist = options.estimate or options.regions or options.geojson
            needs_dist = needs_dist or options.check_exif or options.verify
            dists = self.geo.distributions(q, mask) if needs_dist else [None] * len(readable)
            for d, cands, dist in zip(readable, ranked, dists, strict=True):
                pred = Prediction(d.name, cands)
                if options.estimate or options.regions:
                    for key, value in describe(dist, options.estimate, options.regions).items():
                        setattr(pred, key, value)
                result: dict[str, Any] = {"record": pred.to_dict(settings)}
                if options.geojson:
                    result["geojson"] = dist.to_geojson(
                        options.regions or (0.5, 0.9), options.estimate or "median"
                    )
                if options.check_exif or options.verify:
                    result["verification"] = self._verify(d, dist, options)
                by_name[id(d)] = result
        out = []
        for d in decoded:
            if d.pixels is None:
                out.append({"record": Prediction(d.name, error=d.error).to_dict(settings)})
            else:
                out.append(by_name[id(d)])
        return out

    def _verify(self, d: Decoded, dist: Any, options: Options) -> dict[str, Any]:
        """The claim check: the given claim, else the photo's EXIF GPS, else why there is none."""
        claim, source = options.claimed, "given"
        if claim is None:
            if d.exif_gps is None:
                return {"error": d.exif_error or f"{d.name}: the photo has no EXIF GPS location"}
            claim, source = d.exif_gps, "exif"
        verdict = verify_claim(
            dist,
            claim,
            alpha=options.alpha,
            estimate=options.estimate or "median",
            claim_source=source,
        )
        return verdict.to_dict()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def model_card(config: ServeConfig, ckpt: dict[str, Any], geo: Any) -> dict[str, Any]:
    """What `GET /v1/models` says: method, backbone, gallery and calibration, from the
    checkpoint's config.json and the loaded model."""
    from geoalign.models.registry import checkpoint_backbone

    calibration = ckpt.get("calibration")
    gallery_rows = None if geo.gallery is None else len(geo.gallery)
    return {
        "model": config.model,
        "method": geo.model.method,
        "backbone": {
            "served": config.backbone,
            "checkpoint": checkpoint_backbone(ckpt),
            "feature_dim": geo.model.feature_dim,
        },
        "gallery": {
            "name": config.gallery if gallery_rows is not None else None,
            "rows": gallery_rows,
            "checkpoint_gallery": ckpt.get("gallery"),
        },
        "candidates": len(geo.candidates),
        "ranks": geo.model.ranks,
        "calibration": calibration or None,
        "calibrated": bool(calibration),
        "estimates": list(ESTIMATES),
        "device": config.device,
        "format": {k: ckpt.get(k) for k in ("format", "format_version")},
    }


@functools.lru_cache(maxsize=1)
def basemap_geojson(tolerance: float = 0.05) -> bytes:
    """Natural Earth admin-0 outlines (the polygons geoalign ships for priors), simplified to
    `tolerance` degrees: the page's offline base layer (~1 MB, gzip ~0.4 MB)."""
    import json

    import shapely
    from shapely.geometry import mapping

    from geoalign.geo.regions import load_countries

    atlas = load_countries()
    features = []
    for country, geom in zip(atlas.countries, atlas.geometries, strict=True):
        simple = shapely.simplify(geom, tolerance, preserve_topology=True)
        if simple.is_empty:
            continue
        shape = mapping(shapely.set_precision(simple, 0.01))
        features.append(
            {
                "type": "Feature",
                "properties": {"code": country.code, "name": country.name},
                "geometry": shape,
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()
