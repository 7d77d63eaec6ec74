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
from typing import Any

import torch

from geoalign.errors import DataError
from geoalign.inference.distribution import ESTIMATES
from geoalign.inference.locator import MIN_SEPARATION_KM
from geoalign.inference.prediction import Prediction, attach
from geoalign.inference.prediction import record_settings as prediction_settings
from geoalign.inference.verify import verify_claim
from geoalign.serve.config import ServeConfig
from geoalign.serve.uploads import Decoded

log = logging.getLogger("geoalign.serve.engine")
HEATMAP_CELLS = 600  # densest smoothing cells sent for a heatmap: a few tens of KB per photo


@dataclass
class Options:
    """What one request asks for (validated by the app before it gets here)."""

    top_k: int = 5
    estimate: str | None = None
    regions: tuple[float, ...] = ()
    prior: Any = None
    geojson: bool = False
    heatmap: bool = False  # the GeoJSON adds the densest cells, for the page's heatmap
    check_exif: bool = False
    alpha: float = 0.05
    claimed: tuple[float, float] | None = None
    verify: bool = False  # /v1/verify: a verdict per image is the point of the request
    extras: dict[str, Any] = field(default_factory=dict)


def record_settings(
    config: ServeConfig, top_k: int, prior: Any, gallery: str | None = None
) -> dict[str, Any]:
    """The settings field of a record, key for key what `geoalign predict` writes for the same
    model, backbone, gallery and options; `gallery`: the name "auto" resolved to at load (the
    one searched), else the configured one is resolved now."""
    return prediction_settings(
        model=config.model,
        backbone=config.backbone,
        gallery=gallery or config.gallery,
        top_k=top_k,
        prior=None if prior is None else str(prior),
        places=config.places,
        min_separation_km=MIN_SEPARATION_KM,
    )


def served_galleries(configured: str, model: str) -> tuple[str, ...]:
    """The names a request may give for the gallery a service of `model` searches: the one it
    was started with and, for "auto", the one that resolves to (`registry.checkpoint_gallery`:
    the checkpoint's, else geoclip-100k, as `geoalign predict`). Read once, at load."""
    if configured != "auto":
        return (configured,)
    from geoalign.models.registry import checkpoint_gallery

    return ("auto", checkpoint_gallery(model))


@dataclass
class Explainer:
    """What /v1/explain needs beside the model: the checkpoint folder the explanation names
    (as `geoalign explain` does) and its country concept bottleneck, when one was fitted."""

    model_path: str
    cbm: Any = None

    @classmethod
    def load(cls, model: str, concepts: list[str]) -> Explainer:
        """A bottleneck fitted for another concept list fails here, at start-up (reported by
        /readyz), not in every /v1/explain call."""
        from geoalign.interpret.cbm import ConceptBottleneck, cbm_dir
        from geoalign.models.registry import resolve_checkpoint_dir

        path = resolve_checkpoint_dir(model)
        cbm = None
        if (cbm_dir(path) / "cbm.json").is_file():
            cbm = ConceptBottleneck.load(cbm_dir(path))
            if cbm.concepts != concepts:
                raise DataError(
                    f"{cbm_dir(path)}: the concept bottleneck was fitted for another concept "
                    "list than the model's; refit it with `geoalign explain fit-cbm`"
                )
        return cls(str(path), cbm)


class Engine:
    """A loaded model with the batching-friendly calls the app needs."""

    def __init__(
        self,
        geolocator: Any,
        config: ServeConfig,
        card: dict[str, Any],
        explainer: Explainer | None = None,
    ) -> None:
        if geolocator.backbone is None:
            raise DataError("the service reads photos: the model needs a backbone")
        self.geo = geolocator
        self.config = config
        self.explainer = explainer
        self.card = {**card, **explain_card(geolocator, explainer)}
        self.transform = geolocator.backbone.transform
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoalign-model")
        self._masks: OrderedDict[str, torch.Tensor | None] = OrderedDict()
        self.galleries: tuple[str, ...] = (config.gallery,)  # names a request may give for it

    @classmethod
    def load(cls, config: ServeConfig) -> Engine:
        """Load the model, backbone and gallery named in `config` (the slow part of start-up)."""
        from geoalign.inference.locator import Geolocator
        from geoalign.models.registry import checkpoint_config

        geo = Geolocator.from_pretrained(
            config.model, backbone=config.backbone, gallery=config.gallery, device=config.device
        )
        explainer = None
        if geo.model.method == "concept":
            explainer = Explainer.load(config.model, list(geo.model.concept_set.names))
        card = model_card(config, checkpoint_config(config.model), geo)
        engine = cls(geo, config, card, explainer)
        engine.galleries = served_galleries(config.gallery, config.model)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """One blank photo through the whole path, so that /readyz means the first request
        pays no lazy loading (the place index, the smoothing grid, the mode seeker)."""
        from PIL import Image

        pixels = self.transform(Image.new("RGB", (64, 64), (128, 128, 128)))
        decoded = [Decoded("warm-up", pixels=pixels)]
        self.finish(decoded, list(self.embed(pixels[None])), Options(top_k=1, regions=(0.5,)))
        if self.explainer is not None:  # the concept path too (the country names, the CBM)
            self.explain(decoded, top_k=1)

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
        settings = record_settings(self.config, options.top_k, options.prior, self.galleries[-1])
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
                    attach(pred, dist, options.estimate, options.regions)
                result: dict[str, Any] = {"record": pred.to_dict(settings)}
                if options.geojson:
                    result["geojson"] = dist.to_geojson(
                        options.regions or (0.5, 0.9),
                        options.estimate or "median",
                        heatmap_cells=HEATMAP_CELLS if options.heatmap else 0,
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

    def explain(self, decoded: list[Decoded], top_k: int | None) -> list[dict[str, Any]]:
        """One `geoalign.explanation/v1` record per upload, in order: the record `geoalign
        explain --json` writes for the same photo (less its chart file), or the upload's error.

        Runs the backbone itself (not through the batcher: the concept scores read the head's
        unnormalised embedding of the backbone features, not the unit queries)."""
        from geoalign.interpret.explain import (
            EXPLANATION_SCHEMA,
            explain_features,
            explanation_record,
        )

        if self.explainer is None:
            raise DataError("the served model has no concept scores")
        readable = [d for d in decoded if d.pixels is not None]
        by_id: dict[int, dict[str, Any]] = {}
        if readable:
            pixels = torch.stack([d.pixels for d in readable]).to(self.config.device)
            with torch.inference_mode():
                features = self.geo.backbone(pixels).float().cpu().numpy()
            exps = explain_features(
                self.geo.model,
                features,
                [d.name for d in readable],
                cbm=self.explainer.cbm,
                top_k=top_k,
                geolocator=self.geo,
            )
            for d, exp in zip(readable, exps, strict=True):
                by_id[id(d)] = explanation_record(exp, self.explainer.model_path)
        return [
            by_id.get(id(d)) or {"schema": EXPLANATION_SCHEMA, "source": d.name, "error": d.error}
            for d in decoded
        ]

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
    from geoalign.models.registry import model_features

    calibration = ckpt.get("calibration")
    gallery_rows = None if geo.gallery is None else len(geo.gallery)
    return {
        "model": config.model,
        "method": geo.model.method,
        "backbone": {
            "served": config.backbone,
            "checkpoint": model_features(ckpt),
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


def explain_card(geo: Any, explainer: Explainer | None) -> dict[str, Any]:
    """The model card's say on /v1/explain: whether it works, and with what."""
    if explainer is None:
        return {"explain": False, "concepts": None}
    model = geo.model
    return {
        "explain": True,
        "concepts": {
            "count": model.num_concepts,
            "top_k": model.concept_config.top_k,
            "country_bottleneck": explainer.cbm is not None,
        },
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
