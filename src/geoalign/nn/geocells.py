"""GeoSURGE's geographic representation (Daruna et al., Sec. III-A, III-D) as network modules:
one embedding table and temperature per partition level (or a linear classifier per level), and
hierarchical inference over the finest cells. The method that uses them is
`geoalign.models.geosurge`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoalign.losses import (
    LevelLosses,
    Negatives,
    hierarchical_classification_loss,
    hierarchical_info_nce,
)

# --- hierarchical inference ------------------------------------------------------------------


def hierarchical_log_scores(level_logits: list[Tensor], fine_parents: Tensor) -> Tensor:
    """log of the product over levels of softmax probabilities, for every finest cell: [B, n_fine].

    level_logits[k] [B, n_k] (coarse to fine); fine_parents [n_fine, L-1] class index of each
    finest cell's containing cell at the coarser levels (-1: none -> uniform 1/n_k).
    """
    n_levels = len(level_logits)
    if fine_parents.dim() != 2 or fine_parents.shape[1] != n_levels - 1:
        raise ValueError(
            f"fine_parents must be [n_fine, {n_levels - 1}], got {tuple(fine_parents.shape)}"
        )
    out = torch.log_softmax(level_logits[-1].float(), dim=-1)
    if fine_parents.shape[0] != out.shape[1]:
        raise ValueError(f"{fine_parents.shape[0]} parent rows for {out.shape[1]} finest cells")
    parents = fine_parents.to(out.device)
    for k in range(n_levels - 1):  # a loop over levels; each gather covers every cell at once
        logp = torch.log_softmax(level_logits[k].float(), dim=-1)
        idx = parents[:, k]
        gathered = logp.index_select(1, idx.clamp(min=0))
        out = out + torch.where(idx >= 0, gathered, -math.log(logp.shape[1]))
    return out


# --- geographic representation -------------------------------------------------------------------


class GeographicEmbeddings(nn.Module):
    """One embedding table and one learnable temperature per level; logits = cos / tau_k."""

    def __init__(
        self,
        level_sizes: tuple[int, ...],
        dim: int,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = math.log(100.0),
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in level_sizes)
        self.logit_scales = nn.Parameter(
            torch.full((len(level_sizes),), math.log(1.0 / temperature_init)),
            requires_grad=learn_temperature,
        )
        self.max_logit_scale = max_logit_scale
        self.sizes = tuple(level_sizes)
        self._unit_cache: tuple[tuple, Tensor] | None = None

    def unit_tables(self) -> Tensor:
        """Every level's unit-norm embeddings, concatenated: [sum of cells, dim], float32.

        Without autograd (inference, validation) the result is cached until a weight changes:
        normalising ~60K x 768 embeddings per query batch would cost more than the matmul."""
        weights = [t.weight for t in self.tables]
        if torch.is_grad_enabled():
            return torch.cat([F.normalize(w.float(), dim=-1) for w in weights])
        key = tuple((w.data_ptr(), w._version, w.device, w.dtype) for w in weights)
        if self._unit_cache is None or self._unit_cache[0] != key:
            unit = torch.cat([F.normalize(w.detach().float(), dim=-1) for w in weights])
            self._unit_cache = (key, unit)
        return self._unit_cache[1]

    def scales(self) -> Tensor:
        """Log logit scales in use, clamped like CLIP's (tau >= 0.01)."""
        return self.logit_scales.clamp(max=self.max_logit_scale)

    def queries(self, visual: Tensor) -> Tensor:
        return F.normalize(visual.float(), dim=-1)

    def logits(self, queries: Tensor) -> list[Tensor]:
        """exp(scale_k) * cosine for each level; `queries` are normalised (see `queries`)."""
        scales = self.scales().float().exp()
        sims = queries.float() @ self.unit_tables().T  # one matmul for all levels
        return [scales[k] * part for k, part in enumerate(sims.split(self.sizes, dim=-1))]

    def loss(
        self,
        visual: Tensor,
        labels: Tensor,
        *,
        negatives: Negatives = "batch",
        candidate_labels: Tensor | None = None,
    ) -> LevelLosses:
        return hierarchical_info_nce(
            visual,
            [t.weight for t in self.tables],
            self.scales(),
            labels,
            negatives=negatives,
            candidate_labels=candidate_labels,
        )


class LevelClassifiers(nn.Module):
    """A linear classifier per level (no geographic embeddings, no temperature)."""

    def __init__(self, level_sizes: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in level_sizes)

    def queries(self, visual: Tensor) -> Tensor:
        return visual.float()

    def logits(self, queries: Tensor) -> list[Tensor]:
        return [F.linear(queries.float(), h.weight.float(), h.bias.float()) for h in self.heads]

    def loss(self, visual: Tensor, labels: Tensor, **_: Any) -> LevelLosses:
        return hierarchical_classification_loss(self.logits(self.queries(visual)), labels)
