"""The interface every geo-localization method implements (GeoCLIP, concept-aware, GeoSURGE).

A `Locator` turns inputs into *queries*, builds its *candidates* (GPS gallery rows, or its own
geocells) and scores queries against them. Everything that ranks, seeks modes or (later) builds
densities consumes only this: `geoalign.inference.Geolocator`, the evaluation harness, the
service. A method gives untempered `similarities` and its `temperature`; `logit_scale` below is
the one place the temperature (times a calibration factor) is applied, for the exact softmax
(`logits`) and for `GallerySearch`'s shortlists alike; `log_probs` below is the one softmax.

Queries are linear in the logits (unit image embeddings for retrieval methods, unit or raw visual
features for GeoSURGE), so the mean of several crops' queries gives the mean of their logits:
ten-crop is `average_crops` and nothing method-specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

Reads = Literal["features", "pixels", "pixels+segmentation"]


@dataclass
class Candidates:
    """What a locator ranks. `latlon` [M, 2] float64 degrees; `keys` [M, E] unit location
    embeddings for retrieval methods (None for cell classifiers); `cells` the S2 cell id of the
    area each candidate stands for (geocells: their mass is spread over it), None for points."""

    latlon: np.ndarray
    kind: Literal["gallery", "cells"]
    keys: Tensor | None = None
    description: str = ""
    cells: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.latlon)


def is_feature_major(keys: Tensor) -> bool:
    """Whether [M, E] `keys` are stored dimension by dimension (a transposed view of [E, M])."""
    return keys.dim() == 2 and keys.T.is_contiguous()


def feature_major(keys: Tensor) -> Tensor:
    """[M, E] `keys` stored dimension by dimension ([E, M] in memory, seen transposed), so that
    scoring `queries @ keys.T` reads them in the layout a CPU matrix-vector product is fastest on:
    for one query against the 100K x 512 gallery it takes less than half the time of row-by-row
    keys, and batches are no slower (both measured by benchmarks/distribution.py). No copy when
    already so; GPUs (cuBLAS) are indifferent to the layout, which `.to(device)` keeps."""
    return keys if is_feature_major(keys) else keys.T.contiguous().T


@runtime_checkable
class Locator(Protocol):
    """A trained geo-localization model.

    - `method`: its registry name ("geoclip", "concept", "geosurge", ...);
    - `ranks`: "gallery" (retrieval over a GPS gallery the user chooses) or "cells" (its own);
    - `reads`: what `encode_*` needs: backbone features, pixels, or pixels + a segmentation map;
    - `feature_dim`: the width of the features it reads (None: not recorded);
    - `backbone_spec`: the backbone its features come from (None: not recorded).
    """

    method: str
    ranks: Literal["gallery", "cells"]

    @property
    def reads(self) -> Reads: ...

    @property
    def feature_dim(self) -> int | None: ...

    @property
    def backbone_spec(self) -> str | None: ...

    def encode_features(self, features: Tensor) -> Tensor:
        """Backbone features [B, D] -> queries [B, E]."""
        ...

    def encode_pixels(self, pixels: Tensor, segmentation: Tensor | None = None) -> Tensor:
        """Pixels [B, 3, H, W] (+ label maps [B, H, W]) -> queries [B, E], for methods that own
        (part of) their backbone; frozen-backbone methods raise and read features instead."""
        ...

    def candidates(
        self, gallery: np.ndarray | None = None, keys: Tensor | None = None
    ) -> Candidates:
        """The candidate set: a GPS gallery [M, 2] (with precomputed `keys`, e.g. from the
        gallery cache) for retrieval methods; the method's own cells for cell classifiers.
        `keys` are handed over: a method may normalise them in place (no second gallery)."""
        ...

    def similarities(self, queries: Tensor, candidates: Candidates) -> Tensor:
        """[B, M] untempered scores of queries over candidates: cosines for retrieval methods
        (unit queries against unit `keys`), which `GallerySearch` may compute its own way."""
        ...

    def temperature(self) -> float:
        """The multiplier that turns `similarities` into logits (1.0 for a method whose scores
        carry their own temperatures). Read through `logit_scale` only."""
        ...


def logit_scale(model: Locator, factor: float = 1.0) -> float:
    """The one multiplier of a model's similarities: its temperature times a calibration's
    logit `factor`. Every consumer (softmax, gallery search, calibration fitting) reads it here."""
    return model.temperature() * float(factor)


def logits(model: Locator, queries: Tensor, candidates: Candidates, factor: float = 1.0) -> Tensor:
    """[B, M] logits of queries over candidates: `similarities` times `logit_scale`.

    Without autograd the product is taken in place (`similarities` always returns a new tensor):
    a second gallery-sized buffer per batch (25 MB for 64 queries x 100K) costs more in fresh
    memory pages than the multiplication itself."""
    scale = logit_scale(model, factor)
    sims = model.similarities(queries, candidates)
    if scale == 1.0:
        return sims
    return sims * scale if sims.requires_grad else sims.mul_(scale)


def average_crops(encode, inputs: Tensor, item_dims: int) -> Tensor:
    """`encode` over [B, crops, *item] inputs as the mean of the crops' queries; [B, *item]
    inputs pass through. `item_dims`: 1 for feature vectors, 3 for images."""
    if inputs.dim() == item_dims + 1:
        return encode(inputs)
    if inputs.dim() != item_dims + 2:
        raise ValueError(
            f"expected [B, *item] or [B, crops, *item] inputs, got {tuple(inputs.shape)}"
        )
    b, n = inputs.shape[:2]
    return encode(inputs.flatten(0, 1)).view(b, n, -1).mean(1)


def log_probs(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Log-probabilities over the candidates a prior `mask` (bool [M]) leaves: -inf elsewhere."""
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask.to(logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)
