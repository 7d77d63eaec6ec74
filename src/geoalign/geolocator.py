"""The inference pipeline: images in, ranked coordinates with probabilities and place names out.

Separate from training (as plonk separates pipe.py): it imports no trainer, computes the gallery
embeddings once (cached on disk), and batches images through the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from geoalign.data.galleries import load_gallery
from geoalign.gallery_cache import gallery_embeddings
from geoalign.nn.image_head import ImageHead
from geoalign.nn.location_encoder import LocationEncoder
from geoalign.search import GallerySearch


@dataclass
class Candidate:
    lat: float
    lon: float
    prob: float
    gallery_index: int
    place: dict[str, Any] | None = None


@dataclass
class Prediction:
    """Top-k candidates for one input, or the reason it could not be read."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"source": self.source, "error": self.error}
        return {
            "source": self.source,
            "predictions": [
                {
                    "lat": c.lat,
                    "lon": c.lon,
                    "prob": c.prob,
                    **({"place": c.place} if c.place else {}),
                }
                for c in self.candidates
            ],
        }


class Geolocator:
    """Backbone → image head → similarity with the gallery → top-k."""

    def __init__(
        self,
        backbone: torch.nn.Module | None,
        image_head: ImageHead,
        location_encoder: LocationEncoder,
        logit_scale: float | torch.Tensor,
        gallery: pd.DataFrame,
        *,
        cache: bool = True,
        progress: Callable[[int], None] | None = None,
        gallery_precision: str = "float32",
    ) -> None:
        self.backbone = backbone
        self.image_head = image_head.eval()
        self.location_encoder = location_encoder.eval()
        self.logit_scale = float(torch.as_tensor(logit_scale).exp())  # stored as log
        self.gallery = gallery.reset_index(drop=True)
        self._latlon = self.gallery[["lat", "lon"]].to_numpy(dtype=np.float64)
        emb = gallery_embeddings(location_encoder, self._latlon, cache=cache, progress=progress)
        # "float16": a half-precision copy for one-photo calls, same top-k (see GallerySearch)
        self.search = GallerySearch(emb, self.logit_scale, precision=gallery_precision, copy=False)
        self._places = None

    @classmethod
    def from_pretrained(
        cls,
        model: str = "geoclip",
        *,
        backbone: str | torch.nn.Module | None = "clip-vit-l14",
        gallery: str | pd.DataFrame = "geoclip-100k",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache: bool = True,
        gallery_precision: str = "float32",
    ) -> Geolocator:
        """Official or trained weights; the backbone from the HF cache, a local path, or a module.

        backbone="auto": the backbone the checkpoint records. A GeoSURGE checkpoint (config.json
        "method": "geosurge") returns a `GeoSurgeLocator` (same prediction API, ranks geocells).
        """
        from geoalign.zoo import load_checkpoint, load_image_head, load_location_encoder

        ckpt = load_checkpoint(model)
        if ckpt.config.get("method") == "geosurge":
            from geoalign.models.geosurge import GeoSurgeLocator

            return GeoSurgeLocator.from_pretrained(
                model, backbone=backbone, gallery=gallery, device=device, dtype=dtype
            )
        if isinstance(backbone, str) and backbone == "auto":
            backbone = ckpt.config.get("backbone") or "clip-vit-l14"
        if isinstance(backbone, str):
            from geoalign.nn.backbones import load_backbone

            backbone = load_backbone(backbone, device=device, dtype=dtype)
        table = gallery if isinstance(gallery, pd.DataFrame) else load_gallery(gallery)
        return cls(
            backbone,
            load_image_head(model, device=device, dtype=dtype),
            load_location_encoder(model, device=device),
            ckpt.state["logit_scale"],
            table,
            cache=cache,
            gallery_precision=gallery_precision,
        )

    # -- embeddings --------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, D) → L2-normalised image embeddings (B, 512)."""
        return F.normalize(self.image_head(features).float(), dim=-1)

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → embeddings; (B, n_crops, 3, H, W) → the mean of the crops' normalised
        embeddings, which makes the logits the average of the crops' logits (the official
        ten-crop rule)."""
        if self.backbone is None:
            raise ValueError("this Geolocator has no backbone: pass features to predict_features")
        crops = pixel_values.ndim == 5
        flat = pixel_values.flatten(0, 1) if crops else pixel_values
        emb = self.embed_features(self.backbone(flat))
        if crops:
            emb = emb.view(pixel_values.shape[0], pixel_values.shape[1], -1).mean(1)
        return emb

    # -- search ------------------------------------------------------------------------------
    def prior_mask(self, prior) -> torch.Tensor | None:
        """Boolean mask over the gallery for a prior (anything with .mask(latlon[N, 2]))."""
        if prior is None:
            return None
        mask = np.asarray(prior.mask(self._latlon), dtype=bool)
        if not mask.any():
            raise ValueError(f"the prior {prior} contains no gallery location")
        return torch.from_numpy(mask)

    def _candidates(
        self, idx: np.ndarray, coords: np.ndarray, probs: np.ndarray, places: bool
    ) -> list[list[Candidate]]:
        """Candidates from [B, k] gallery (or cell) indices, [B, k, 2] coordinates and [B, k]
        probabilities; with `places`, each named offline (the place index loads on first use)."""
        names = None
        if places:
            if self._places is None:
                from geoalign.geo.places import PlaceFinder

                self._places = PlaceFinder()
            names = [p._asdict() for p in self._places.nearest(coords.reshape(-1, 2))]
        k = idx.shape[1]
        return [
            [
                Candidate(
                    lat=float(coords[b, j, 0]),
                    lon=float(coords[b, j, 1]),
                    prob=float(probs[b, j]),
                    gallery_index=int(idx[b, j]),
                    place=names[b * k + j] if names else None,
                )
                for j in range(k)
            ]
            for b in range(idx.shape[0])
        ]

    def rank(
        self,
        embeddings: torch.Tensor,
        *,
        top_k: int = 5,
        mask: torch.Tensor | None = None,
        places: bool = False,
    ) -> list[list[Candidate]]:
        """Top-k candidates for each normalised image embedding (see `embed_pixels`)."""
        res = self.search.topk(embeddings, top_k, mask=mask, normalized_queries=True)
        idx, probs = res.indices.cpu().numpy(), res.probs.cpu().numpy()
        return self._candidates(idx, self._latlon[idx], probs, places)

    def predict_features(
        self, features: torch.Tensor, *, top_k: int = 5, prior=None, places: bool = False
    ) -> list[list[Candidate]]:
        """Rank from precomputed backbone features (B, D), e.g. from a feature store."""
        emb = self.embed_features(features)
        return self.rank(emb, top_k=top_k, mask=self.prior_mask(prior), places=places)

    def iter_predict(
        self,
        images: Iterable[Any] | Any,
        *,
        top_k: int = 5,
        prior=None,
        ten_crop: bool = False,
        batch_size: int = 16,
        places: bool = False,
        skip: set[str] | None = None,
        recursive: bool = False,
        num_workers: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order, batch by batch; unreadable inputs yield an error record.

        `skip` names inputs already done (resuming an interrupted run).
        """
        from torch.utils.data import DataLoader

        from geoalign.data.images import ImageInputDataset, collate_images, expand_inputs
        from geoalign.data.transforms import ten_crop_transform

        if self.backbone is None:
            raise ValueError("this Geolocator has no backbone: use predict_features")
        sources = expand_inputs(images, recursive=recursive)
        if skip:
            sources = [s for s in sources if s.name not in skip]
        transform = (
            ten_crop_transform(self.backbone.preprocess) if ten_crop else self.backbone.transform
        )
        loader = DataLoader(
            ImageInputDataset(sources, transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_images,
        )
        mask = self.prior_mask(prior)  # once, reused for every batch
        position = {s.name: s.index for s in sources}
        for batch in loader:
            done: list[tuple[int, Prediction]] = []
            if batch.pixel_values is not None:
                ranked = self.rank(
                    self.embed_pixels(batch.pixel_values), top_k=top_k, mask=mask, places=places
                )
                done += [
                    (pos, Prediction(name, cands))
                    for pos, name, cands in zip(batch.indices, batch.names, ranked, strict=True)
                ]
            done += [
                (position.get(e.path, -1), Prediction(e.path, error=e.reason)) for e in batch.errors
            ]
            for _, prediction in sorted(done, key=lambda item: item[0]):
                yield prediction
            if on_batch is not None:
                on_batch(len(batch.indices) + len(batch.errors))

    def predict(self, images: Iterable[Any] | Any, **kwargs: Any) -> list[Prediction]:
        """All predictions at once; see `iter_predict` for the options."""
        return list(self.iter_predict(images, **kwargs))
