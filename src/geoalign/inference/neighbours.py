"""Retrieval-augmented candidates (as G3 and Img2Loc do): the locations of the training photos
nearest to a query, in the model's own query space, join that query's candidate set.

A GPS gallery holds places the model may answer, but it is a fixed grid of coordinates: a query
whose nearest training photos sit 3 km from the closest gallery row can at best be answered 3 km
off. Adding those photos' exact locations as candidates, scored by the same location encoder and
softmax as the gallery rows, lets the model pick them when it agrees with them, and costs one
similarity search against the training photos per query.

The candidate set becomes the gallery followed by every training location; each query's mask
allows the whole gallery and only its own k nearest training rows, so priors, top-k, mode
seeking, distributions and calibration all work unchanged on the union.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geoalign.errors import DataError
from geoalign.models.base import Candidates, Locator, feature_major


class TrainingNeighbours:
    """Training photos as unit queries [N, E] with their locations [N, 2]; `k` nearest per query.

    `offset`: where the training rows start in the candidate set (the gallery's length)."""

    def __init__(self, queries: torch.Tensor, latlon: np.ndarray, k: int, offset: int) -> None:
        latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        if not k >= 1:
            raise DataError(f"training neighbours: k must be at least 1, got {k}")
        if len(queries) != len(latlon):
            raise DataError(
                f"training neighbours: {len(queries)} feature rows but {len(latlon)} locations"
            )
        if len(latlon) == 0:
            raise DataError("training neighbours: no training rows")
        self.queries = F.normalize(queries.float(), dim=-1)
        self.latlon = latlon
        self.k = min(int(k), len(latlon))
        self.offset = int(offset)

    def __len__(self) -> int:
        return len(self.latlon)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into the training rows [B, k], cosine similarities [B, k]), best first.

        Exact search (one matmul): the training set of a feature-trained model fits in memory
        as its features already do; an ANN index is only worth it far beyond that."""
        q = F.normalize(queries.float(), dim=-1).to(self.queries.device)
        sims, idx = torch.topk(q @ self.queries.T, self.k, dim=-1)
        return idx.cpu(), sims.cpu()

    def mask(self, queries: torch.Tensor, n_candidates: int) -> torch.Tensor:
        """[B, n_candidates] allowed candidates: every gallery row and the query's k nearest
        training rows."""
        idx, _ = self.nearest(queries)
        allowed = torch.zeros(len(idx), n_candidates, dtype=torch.bool)
        allowed[:, : self.offset] = True
        allowed.scatter_(1, idx + self.offset, True)
        return allowed


def with_training_locations(
    model: Locator, gallery: Candidates, queries: torch.Tensor, latlon: np.ndarray, k: int
) -> tuple[TrainingNeighbours, Candidates]:
    """The neighbour index over training `queries` [N, E] at `latlon` [N, 2], and the candidate
    set `gallery` followed by those locations, keyed by the model's own location encoder."""
    from geoalign.inference.gallery_cache import gallery_embeddings

    keys = None
    if hasattr(model, "location_encoder"):
        keys = gallery_embeddings(model.location_encoder, latlon, cache=False)
    extra = model.candidates(latlon, keys)
    neighbours = TrainingNeighbours(queries, latlon, k, offset=len(gallery))
    joined = Candidates(
        np.concatenate([gallery.latlon, extra.latlon]),
        "gallery",
        feature_major(torch.cat([gallery.keys, extra.keys.to(gallery.keys.device)])),
        f"{gallery.description} + {neighbours.k} of {len(latlon)} training locations",
    )
    return neighbours, joined
