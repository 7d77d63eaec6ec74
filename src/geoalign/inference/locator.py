"""The inference pipeline over any `Locator`: images or features in, ranked coordinates with
probabilities and place names out.

Separate from training (as plonk separates pipe.py): it imports no trainer. For retrieval methods
the gallery embeddings are computed once (cached on disk) and searched by `GallerySearch`; cell
classifiers (GeoSURGE) rank their own cells. Either way candidates, priors, ten-crop, batching and
error records are this one code path, and so is `log_probs`, which the evaluation harness reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch

from geoalign.errors import DataError, GeoalignError
from geoalign.geo.separation import distinct_top_k
from geoalign.inference.cell_gallery import CellGallery
from geoalign.inference.distribution import (
    DEFAULT_LEVEL,
    ESTIMATES,
    CellGrid,
    Distribution,
    check_p,
    solve_together,
)
from geoalign.inference.gallery_cache import gallery_embeddings
from geoalign.inference.neighbours import TrainingNeighbours, with_training_locations
from geoalign.inference.photos import embed_batches, photo_batches
from geoalign.inference.prediction import Candidate, Prediction, attach, ranked_candidates
from geoalign.inference.search import GallerySearch
from geoalign.inference.widths import check_backbone_width
from geoalign.models.base import Locator, average_crops, log_probs, logit_scale, logits

NO_IMAGE_BACKBONE = {"places365-scene-labels"}  # feature specs no backbone makes from photos
MIN_SEPARATION_KM = 5.0  # top-k candidates closer than this to a better one are merged into it


class Geolocator:
    """A trained `Locator`, the backbone (and segmenter) that read photos for it, and its
    candidates: GPS gallery rows for retrieval methods, finest cells for cell classifiers.

    `backbone`: the frozen backbone whose features a features-reading model expects (None:
    features only, see `predict_features`); models that train their own backbone block bring it.
    `gallery`: the GPS gallery (a DataFrame with lat/lon) a retrieval model ranks, or that refines
    the coordinates of a cell classifier's cells (`coordinates="gallery"`).
    `release_weight_pages`: a frozen backbone's (and segmenter's) weights memory-mapped from
    their checkpoint are given back to the page cache after each module's forward, so they do
    not all stay resident (`geoalign.nn.backbones.mapped_pages`; same outputs).
    """

    def __init__(
        self,
        model: Locator,
        *,
        backbone: torch.nn.Module | None = None,
        segmenter: torch.nn.Module | None = None,
        gallery: pd.DataFrame | np.ndarray | None = None,
        coordinates: str | None = None,
        cache: bool = True,
        progress: Callable[[int], None] | None = None,
        gallery_precision: str = "float32",
        calibration: Any = None,
        release_weight_pages: bool = True,
    ) -> None:
        if not isinstance(model, Locator):
            raise TypeError(f"{type(model).__name__} does not implement geoalign's Locator")
        self.model = model.eval()
        own = getattr(model, "backbone", None) if model.reads != "features" else None
        self.backbone = own if own is not None else backbone
        if self.backbone is not None:
            self.backbone.eval()
        check_backbone_width(model, self.backbone)
        self.segmenter = segmenter
        if release_weight_pages:
            from geoalign.nn.backbones.mapped_pages import release_pages_after_forward

            for frozen in (self.backbone, segmenter):
                if frozen is not None:
                    release_pages_after_forward(frozen)
        if model.reads == "pixels+segmentation" and segmenter is None:
            raise GeoalignError("this model fuses segmentation maps: pass a segmenter")
        table = _gallery_frame(gallery)
        self.gallery = table
        self.search: GallerySearch | None = None
        self.refiner: CellGallery | None = None
        if model.ranks == "gallery":  # a retrieval method: the gallery is its candidate set
            if table is None:
                raise GeoalignError(f"a {model.method} model ranks a GPS gallery: pass one")
            latlon = table[["lat", "lon"]].to_numpy(dtype=np.float64)
            keys = None
            if hasattr(model, "location_encoder"):
                keys = gallery_embeddings(
                    model.location_encoder, latlon, cache=cache, progress=progress
                )
            self.candidates = model.candidates(latlon, keys)
            # "float16": a half-precision copy for one-photo calls, same top-k (see GallerySearch)
            self.search = GallerySearch(
                self.candidates.keys, logit_scale(model), precision=gallery_precision, copy=False
            )
            self.coordinates = "gallery"
        else:
            self.candidates = model.candidates()
            self.coordinates = coordinates or getattr(model.config, "coordinates", "mean")
            if self.coordinates == "gallery":
                if table is None:
                    raise GeoalignError("coordinates='gallery' needs a GPS gallery")
                latlon = table[["lat", "lon"]].to_numpy(dtype=np.float64)
                self.refiner = CellGallery(latlon, model.hierarchy)
            elif self.coordinates != "mean":
                raise ValueError(f"coordinates must be 'mean' or 'gallery', got {coordinates!r}")
        self._latlon = self.candidates.latlon
        self.neighbours: TrainingNeighbours | None = None  # see with_training_neighbours
        self._places = None
        self._grids: dict[int, CellGrid] = {}
        self._seekers: dict[float, Any] = {}
        self.calibration = None
        self.set_calibration(calibration)

    @classmethod
    def from_pretrained(
        cls,
        model: str = "geoclip",
        *,
        backbone: str | torch.nn.Module | None = "auto",
        gallery: str | pd.DataFrame | None = "auto",
        segmenter: str | torch.nn.Module | None = "auto",
        coordinates: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache: bool = True,
        gallery_precision: str = "float32",
    ) -> Geolocator:
        """Official or trained weights, through the registry (config and weights read once).

        "auto" = what the checkpoint records: its backbone (features-reading models; None
        loads none, for `predict_features`), its gallery (else geoclip-100k), its segmenter.
        A calibration stored in the checkpoint (`geoalign calibrate`) is applied."""
        from geoalign.models.registry import (
            checkpoint_gallery,
            checkpoint_reads,
            load_checkpoint,
            load_model,
        )

        ckpt = load_checkpoint(model)
        auto_bb = isinstance(backbone, str) and backbone == "auto"
        own_bb = checkpoint_reads(ckpt.config) != "features"
        net = load_model(
            ckpt,
            device=device,
            dtype=dtype,
            **({"backbone": None if auto_bb else backbone} if own_bb else {}),
        )
        frozen = None
        if net.reads == "features" and backbone is not None:
            spec = (net.backbone_spec or "clip-vit-l14") if auto_bb else backbone
            if isinstance(spec, str) and spec not in NO_IMAGE_BACKBONE:
                from geoalign.nn.backbones import load_backbone

                frozen = load_backbone(spec, device=device, dtype=dtype)
            elif not isinstance(spec, str):
                frozen = spec
        seg = None
        if net.reads == "pixels+segmentation":
            auto_seg = segmenter is None or (isinstance(segmenter, str) and segmenter == "auto")
            seg = net.config.segmenter if auto_seg else segmenter
            if isinstance(seg, str):
                from geoalign.nn.segmenters import load_segmenter

                seg = load_segmenter(seg, device=device)
        table = None
        if net.ranks == "gallery" or (coordinates or net.config.coordinates) == "gallery":
            auto = isinstance(gallery, str) and gallery == "auto"
            name = checkpoint_gallery(ckpt.path, ckpt.config) if auto else gallery
            table = name if isinstance(name, pd.DataFrame) else _load_gallery(name)
        from geoalign.inference.calibration import stored_calibration

        calibration = stored_calibration(ckpt.config)
        return cls(
            net,
            backbone=frozen,
            segmenter=seg,
            gallery=table,
            coordinates=coordinates,
            cache=cache,
            gallery_precision=gallery_precision,
            calibration=calibration,
        )

    def with_training_neighbours(
        self, features: Any, latlon: Any, k: int = 16, *, batch_size: int = 1024
    ) -> Geolocator:
        """A copy whose candidates add, for each query, the locations of its `k` nearest
        training photos in the model's query space (retrieval-augmented candidates, as G3 and
        Img2Loc; `geoalign.inference.neighbours`). `features`: the training photos' backbone
        features [N, D] (a feature store's rows), `latlon`: their locations [N, 2].

        The candidates become the gallery followed by the N training locations (indices >= the
        gallery's length are training rows); each is scored by the same location encoder,
        temperature and calibration as the gallery. Retrieval methods only."""
        from geoalign.geo.coords import as_latlon_array

        if self.model.ranks != "gallery":
            raise GeoalignError(
                f"training neighbours join a GPS gallery; this {self.model.method} model ranks "
                "its own geocells"
            )
        if self.neighbours is not None:
            raise GeoalignError("this Geolocator already has training neighbours")
        latlon = as_latlon_array(latlon, source="training locations")
        feats = torch.as_tensor(features if torch.is_tensor(features) else np.asarray(features))
        if len(feats) != len(latlon):
            raise DataError(f"{len(feats)} training feature rows but {len(latlon)} locations")
        queries = (
            torch.cat(
                [
                    self.embed_features(feats[s : s + batch_size]).cpu()
                    for s in range(0, len(feats), batch_size)
                ]
            )
            if len(feats)
            else torch.zeros(0, 1)
        )
        geo = copy.copy(self)
        geo.neighbours, geo.candidates = with_training_locations(
            self.model, self.candidates, queries, latlon, k
        )
        geo.search = None  # per-query masks: ranked by the exact softmax below
        geo._latlon = geo.candidates.latlon
        geo._grids, geo._seekers = {}, {}
        return geo

    def _allowed(self, queries: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The prior's mask, and with training neighbours each query's own neighbours."""
        if self.neighbours is None:
            return mask
        allowed = self.neighbours.mask(queries, len(self.candidates))
        return allowed if mask is None else allowed & mask.to(allowed.device)

    # -- queries -----------------------------------------------------------------------------
    @torch.no_grad()  # not inference_mode: GeoSURGE caches its unit tables between calls
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features [B, D] (or [B, crops, D]: crops averaged) -> queries [B, E]."""
        self._check_width(features.shape[-1])
        return average_crops(self.model.encode_features, features.float(), 1)

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> queries; (B, n_crops, 3, H, W) -> the mean of the crops' queries,
        which makes the logits the mean of the crops' logits (the official ten-crop rule)."""
        if self.backbone is None:
            raise ValueError("this Geolocator has no backbone: pass features to predict_features")
        return average_crops(self._encode_pixels, pixel_values, 3)

    def _encode_pixels(self, flat: torch.Tensor) -> torch.Tensor:
        reads = self.model.reads
        if reads == "features":
            return self.model.encode_features(self.backbone(flat))
        if reads == "pixels":
            return self.model.encode_pixels(flat)
        from geoalign.data.segmentation_store import denormalize

        rgb = denormalize(flat, self.backbone.preprocess)
        return self.model.encode_pixels(flat, self.segmenter(rgb, size=tuple(flat.shape[-2:])))

    def _check_width(self, width: int) -> None:
        want = self.model.feature_dim
        if want is not None and width != want:
            spec = self.model.backbone_spec or "backbone not recorded"
            raise DataError(
                f"the model reads {want}-d features ({spec}), these are {width}-d: "
                "features from another backbone?"
            )

    # -- the distribution ----------------------------------------------------------------------
    @torch.no_grad()
    def log_probs(
        self, queries: torch.Tensor, mask: torch.Tensor | None = None, *, scale: float | None = None
    ) -> torch.Tensor:
        """[B, M] log-probabilities over every candidate (-inf outside a prior's `mask`); the
        model's logits times the calibration's factor (or `scale`, when given)."""
        factor = self._factor() if scale is None else float(scale)
        mask = self._allowed(queries, mask)
        return log_probs(logits(self.model, queries, self.candidates, factor), mask).cpu()

    @torch.no_grad()
    def probs(
        self, queries: torch.Tensor, mask: torch.Tensor | None = None, *, scale: float | None = None
    ) -> torch.Tensor:
        """[B, M] probabilities (float32; the softmax of `log_probs`' logits, in one pass)."""
        factor = self._factor() if scale is None else float(scale)
        scores = logits(self.model, queries, self.candidates, factor).float()
        mask = self._allowed(queries, mask)
        if mask is not None:  # (in place: the scores are this call's own, 25 MB per 64 x 100K)
            scores.masked_fill_(~mask.to(scores.device), float("-inf"))
        return torch.softmax(scores, dim=-1, out=scores).cpu()

    @torch.no_grad()
    def topk(
        self, queries: torch.Tensor, k: int, mask: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(candidate indices [B, k], probabilities [B, k]) renormalised over the allowed ones."""
        allowed = self._allowed(queries, mask)  # [M] prior, or [B, M] with neighbours
        n_allowed = len(self.candidates) if allowed is None else int(allowed.sum(-1).min())
        if n_allowed == 0:
            raise DataError(
                "the prior leaves no candidate to predict"
                if allowed is not None
                else "no candidate to predict: the gallery is empty"
            )
        k = min(k, n_allowed)
        if self.search is not None:
            res = self.search.topk(queries, k, mask=mask, normalized_queries=True)
            return res.indices.cpu().numpy(), res.probs.cpu().numpy()
        scores = logits(self.model, queries, self.candidates, self._factor())
        top, idx = torch.topk(log_probs(scores, allowed).cpu(), k, dim=-1)
        return idx.numpy(), top.exp().numpy()

    def grid(self, level: int) -> CellGrid:
        """The candidates binned into S2 cells of `level` (geocells spread over their area),
        built once per level."""
        if level not in self._grids:
            self._grids[level] = CellGrid(self._latlon, level, self.candidates.cells)
        return self._grids[level]

    def distributions(
        self,
        queries: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        level: int | None = None,
        scale: float | None = None,
        radius_km: float = 750.0,
    ) -> list[Distribution]:
        """One `Distribution` per query (estimates, regions, density, levels) over the
        candidates. By default the stored calibration's logit factor, smoothing level and
        conformal region masses apply; an explicit `level` or `scale` (calibration fitting)
        gives the uncalibrated distribution at those settings. `radius_km`: the mode's radius."""
        cal = self.calibration if level is None and scale is None else None
        if level is None:
            level = cal.level if cal is not None else DEFAULT_LEVEL
        if radius_km not in self._seekers:
            from geoalign.inference.modes import ModeSeeker

            self._seekers[radius_km] = ModeSeeker(self._latlon, radius_km)
        probs = self.probs(queries, mask, scale=scale).numpy()
        grid, seeker = self.grid(level), self._seekers[radius_km]
        return solve_together(
            [Distribution(grid, row, seeker=seeker, calibration=cal) for row in probs]
        )

    def set_calibration(self, calibration: Any) -> None:
        """Use a `geoalign.inference.calibration.Calibration` (None: none) from now on: its logit
        factor scales every probability (top-k and distributions alike)."""
        self.calibration = calibration
        if self.search is not None:
            self.search.scale = logit_scale(self.model, self._factor())

    def _factor(self) -> float:
        return float(self.calibration.scale) if self.calibration is not None else 1.0

    def coordinates_of(self, idx: np.ndarray) -> np.ndarray:
        """[B, k, 2] coordinates of candidate indices (cells refined by the gallery if asked)."""
        if self.refiner is not None:
            return self.refiner.refine(idx)[0]
        return self._latlon[idx]

    def prior_mask(self, prior) -> torch.Tensor | None:
        """Boolean mask over the candidates for a prior (anything with .mask(latlon[N, 2]))."""
        if prior is None:
            return None
        mask = np.asarray(prior.mask(self._latlon), dtype=bool)
        if not mask.any():
            raise DataError(f"the prior {prior} contains no candidate location")
        return torch.from_numpy(mask)

    # -- ranking -------------------------------------------------------------------------------
    def rank(
        self,
        queries: torch.Tensor,
        *,
        top_k: int = 5,
        mask: torch.Tensor | None = None,
        places: bool = False,
        min_separation_km: float = MIN_SEPARATION_KM,
    ) -> list[list[Candidate]]:
        """Top-k distinct candidates for each query (see `embed_pixels`, `embed_features`).

        Candidates closer than `min_separation_km` to a more probable one are merged into it
        (their probability added, `geo.separation.suppress_near_duplicates`), so a dense gallery
        does not fill the list with near-duplicates; top-1 never changes. 0 keeps them all."""
        n_allowed = len(self.candidates) if mask is None else int(mask.sum(-1).min())
        fetch = top_k if min_separation_km <= 0 else min(4 * top_k, max(n_allowed, 1))
        idx, probs = self.topk(queries, fetch, mask)
        rows = distinct_top_k(idx, self.coordinates_of(idx), probs, top_k, min_separation_km)
        if places and self._places is None:
            from geoalign.geo.places import PlaceFinder

            self._places = PlaceFinder()
        return ranked_candidates(rows, self._places if places else None)

    def predict_features(
        self,
        features: torch.Tensor,
        *,
        top_k: int = 5,
        prior=None,
        places: bool = False,
        min_separation_km: float = MIN_SEPARATION_KM,
    ) -> list[list[Candidate]]:
        """Rank from precomputed backbone features (B, D), e.g. from a feature store."""
        queries = self.embed_features(torch.as_tensor(features))
        return self.rank(
            queries,
            top_k=top_k,
            mask=self.prior_mask(prior),
            places=places,
            min_separation_km=min_separation_km,
        )

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
        estimate: str | None = None,
        regions: Iterable[float] = (),
        abstain_above_km: float | None = None,
        min_separation_km: float = MIN_SEPARATION_KM,
        decode: str = "cpu",
    ) -> Iterator[Prediction]:
        """Predictions in input order, batch by batch; unreadable inputs yield an error record.

        `skip` names inputs already done (resuming an interrupted run). `estimate` (top1, mode,
        mean, median) and `regions` (probabilities in (0, 1)) add the point estimate and the
        confidence regions of each prediction's distribution (`Prediction.distribution`);
        `abstain_above_km` marks predictions whose 90% region is larger than a disc of that
        radius as abstained (selective prediction). `decode="gpu"` decodes JPEGs on the
        backbone's GPU (nvJPEG) instead of in the workers (`inference.photos`).
        """

        sources, loader = photo_batches(
            self.backbone,
            images,
            ten_crop=ten_crop,
            batch_size=batch_size,
            num_workers=num_workers,
            recursive=recursive,
            skip=skip,
            decode=decode,
        )
        regions = tuple(check_p(p) for p in regions)
        if estimate is not None and estimate not in ESTIMATES:
            raise DataError(f"unknown estimate {estimate!r}; known: {', '.join(ESTIMATES)}")
        mask = self.prior_mask(prior)  # once, reused for every batch
        position = {s.name: s.index for s in sources}
        for batch in loader:
            done: list[tuple[int, Prediction]] = []
            if batch.pixel_values is not None:
                queries = self.embed_pixels(batch.pixel_values)
                ranked = self.rank(
                    queries,
                    top_k=top_k,
                    mask=mask,
                    places=places,
                    min_separation_km=min_separation_km,
                )
                preds = [
                    Prediction(name, cands) for name, cands in zip(batch.names, ranked, strict=True)
                ]
                if estimate or regions or abstain_above_km is not None:
                    for pred, dist in zip(preds, self.distributions(queries, mask), strict=True):
                        attach(pred, dist, estimate, regions, abstain_above_km)
                done += list(zip(batch.indices, preds, strict=True))
            done += [
                (position.get(e.path, -1), Prediction(e.path, error=e.reason)) for e in batch.errors
            ]
            for _, prediction in sorted(done, key=lambda item: item[0]):
                yield prediction
            if on_batch is not None:
                on_batch(len(batch.indices) + len(batch.errors))

    def embed_images(
        self,
        images: Iterable[Any] | Any,
        *,
        ten_crop: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        on_batch: Callable[[int], None] | None = None,
        decode: str = "cpu",
    ) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:
        """Queries of photos, in input order: (queries [n, E] of the readable ones, their input
        positions [n], (path, reason) of the unreadable ones). For evaluation from photos: every
        method's image side, the frozen backbone or the trained block (+ segmenter), as predict."""
        _, loader = photo_batches(
            self.backbone,
            images,
            ten_crop=ten_crop,
            batch_size=batch_size,
            num_workers=num_workers,
            decode=decode,
        )
        return embed_batches(loader, self.embed_pixels, on_batch)

    def predict(self, images: Iterable[Any] | Any, **kwargs: Any) -> list[Prediction]:
        """All predictions at once; see `iter_predict` for the options."""
        return list(self.iter_predict(images, **kwargs))


def _gallery_frame(gallery: pd.DataFrame | np.ndarray | None) -> pd.DataFrame | None:
    if gallery is None or isinstance(gallery, pd.DataFrame):
        return None if gallery is None else gallery.reset_index(drop=True)
    arr = np.asarray(gallery, dtype=np.float64).reshape(-1, 2)
    return pd.DataFrame({"lat": arr[:, 0], "lon": arr[:, 1]})


def _load_gallery(name: str) -> pd.DataFrame:
    from geoalign.data.galleries import load_gallery

    return load_gallery(name)
