"""The concept basis B = E_concept + Δ of the concept-aware alignment module (paper eq. 1), and the
image-side projection f_img (eq. 2).

Rows are concepts (B is stored as [k, d], the transpose of the paper's d x k): z = x̂ Bᵀ, where x̂ is
the L2-normalised location (or image) embedding, so that at initialisation z_c is the cosine between
the embedding and concept c's direction.

E comes from a frozen text encoder, mapped into the location-embedding space in one of three ways:
- "head": E = normalise(g(t)) with g the model's own image head (how GeoCLIP maps text queries to
  locations), bound with `bind_mapper`. E is recomputed from the head on every use, so it follows
  the head as it trains (every training step, every evaluation): computing k concepts through the
  head costs a k-row forward pass, nothing next to a batch, and a per-epoch refresh would leave E
  describing a head that no longer exists for most of the epoch (with a randomly initialised head,
  the whole first epoch would use random directions). No gradient flows through E into the head:
  E reads the head, it does not train it (L_concept still reaches the head through the image
  embeddings). The latest E is also kept in the `embedding` buffer, so a checkpoint stores the E
  of the head it stores;
- "fixed": E is given already in that space (and frozen); only Δ learns. Checkpoints written
  before "head" existed load this way, with the E they were trained with;
- "projection": E = P t with a learned linear map P from the text space (MiniLM's 384-d, or any width),
  initialised semi-orthogonal so that it starts by preserving the text geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Mapping = Literal["head", "fixed", "projection"]


class ConceptBasis(nn.Module):
    """B = E + Δ with one row per concept, in the d-dimensional location-embedding space."""

    def __init__(
        self,
        embeddings: Tensor,
        embed_dim: int,
        *,
        mapping: Mapping = "fixed",
        learn_delta: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if embeddings.dim() != 2 or embeddings.shape[0] < 1:
            raise ValueError(f"concept embeddings must be [k, dim], got {tuple(embeddings.shape)}")
        self.mapping = mapping
        k = embeddings.shape[0]
        emb = embeddings.detach().float()
        self._mapper: Callable[[Tensor], Tensor] | None = None
        self.projection: nn.Linear | None = None
        if mapping == "head":
            self.register_buffer("text", emb)  # as the text encoder gives it: the head's input
            self.register_buffer("embedding", torch.zeros(k, embed_dim))
        elif mapping == "fixed":
            if emb.shape[1] != embed_dim:
                raise ValueError(
                    f"fixed concept embeddings have width {emb.shape[1]}, the location space "
                    f"{embed_dim}: use mapping='projection'"
                )
            self.register_buffer("text", F.normalize(emb, dim=-1))
        elif mapping == "projection":
            self.register_buffer("text", F.normalize(emb, dim=-1))
            self.projection = nn.Linear(emb.shape[1], embed_dim, bias=False)
            gen = torch.Generator().manual_seed(seed)
            w = torch.empty(embed_dim, emb.shape[1])
            with torch.no_grad():
                nn.init.orthogonal_(w, generator=gen)
                self.projection.weight.copy_(w)
        else:
            raise ValueError(f"mapping must be 'head', 'fixed' or 'projection', got {mapping!r}")
        self.delta = nn.Parameter(torch.zeros(k, embed_dim), requires_grad=learn_delta)

    @property
    def num_concepts(self) -> int:
        return self.delta.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.delta.shape[1]

    def bind_mapper(self, mapper: Callable[[Tensor], Tensor]) -> None:
        """For mapping "head": the function t -> g(t) (the model's image head) E is computed with.
        Kept as a plain attribute, not a submodule: the head's weights belong to the model."""
        if self.mapping != "head":
            raise ValueError(
                f"only a 'head' concept basis takes a mapper, this one is {self.mapping!r}"
            )
        self._mapper = mapper

    def concept_embeddings(self) -> Tensor:
        """E_concept [k, d] (unit rows): through the current head, fixed, or the current projection
        of the text embeddings."""
        if self.mapping == "head":
            if self._mapper is None:
                raise RuntimeError("a 'head' concept basis needs bind_mapper(head) before use")
            with torch.no_grad():
                e = F.normalize(self._mapper(self.text).float(), dim=-1)
                self.embedding.copy_(e.to(self.embedding.dtype))
            return e
        if self.projection is None:
            return self.text
        return F.normalize(self.projection(self.text.to(self.projection.weight.dtype)), dim=-1)

    def basis(self) -> Tensor:
        """B = E + Δ, [k, d]."""
        return self.concept_embeddings().to(self.delta.dtype) + self.delta

    def forward(self, embeddings: Tensor) -> Tensor:
        """Concept scores z = x̂ Bᵀ for embeddings [..., d] -> [..., k] (float32 or wider)."""
        work = torch.promote_types(embeddings.dtype, torch.float32)
        x = F.normalize(embeddings.to(work), dim=-1)
        return x @ self.basis().to(work).T

    def mean_scores(self, embeddings: Tensor, basis: Tensor | None = None) -> Tensor:
        """The mean of `forward` over the rows of [N, d] embeddings, [k]: mean(x̂) Bᵀ, one
        vector-matrix product instead of N (z is linear in x̂). `basis`: B if already computed."""
        work = torch.promote_types(embeddings.dtype, torch.float32)
        b = self.basis() if basis is None else basis
        return F.normalize(embeddings.to(work), dim=-1).mean(0) @ b.to(work).T


class ConceptHead(nn.Module):
    """f_img: image embedding [..., d] -> concept scores [..., k] (paper eq. 2, a light MLP).

    With `residual=True` (default) the head is x̂ Bᵀ + MLP(x̂) with the MLP's last layer zero-initialised:
    it starts as the same projection as the locations (so an image's concept scores mean something
    before training, through the aligned image and location spaces) and the MLP learns the rest.
    `residual=False` is the plain MLP of the paper's text.
    """

    def __init__(
        self,
        embed_dim: int,
        num_concepts: int,
        hidden: tuple[int, ...] = (512,),
        *,
        residual: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        last = nn.Linear(width, num_concepts)
        if residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.mlp = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, embeddings: Tensor, basis: ConceptBasis) -> Tensor:
        work = torch.promote_types(embeddings.dtype, torch.float32)
        x = F.normalize(embeddings.to(work), dim=-1)
        out = self.mlp(x.to(self.mlp[0].weight.dtype)).to(work)
        if self.residual:
            out = out + basis(x)
        return out

    def mean_scores(
        self, embeddings: Tensor, basis: ConceptBasis, matrix: Tensor | None = None
    ) -> Tensor:
        """The mean of `forward` over the rows of [N, d] embeddings, [k]. The last layer and the
        residual projection are linear, so they are applied to the mean hidden state and the
        mean x̂: the same value for a fraction of the work (the training loss needs only means).
        `matrix`: B if already computed."""
        work = torch.promote_types(embeddings.dtype, torch.float32)
        x = F.normalize(embeddings.to(work), dim=-1)
        hidden = self.mlp[:-1](x.to(self.mlp[0].weight.dtype)).mean(0)
        out = self.mlp[-1](hidden).to(work)
        if self.residual:
            out = out + basis.mean_scores(x, matrix)
        return out


def top_k_sparse(scores: Tensor, k: int | None) -> Tensor:
    """Keep each row's k largest scores, zero the rest (the paper keeps the top 20 per image).

    Ties at the k-th value are broken by position (torch.topk), so the result has exactly k nonzero
    entries per row wherever the scores are nonzero.
    """
    if k is None or k >= scores.shape[-1]:
        return scores
    if k < 1:
        raise ValueError(f"top-k sparsity needs k >= 1, got {k}")
    idx = torch.topk(scores, k, dim=-1).indices
    out = torch.zeros_like(scores)
    return out.scatter(-1, idx, scores.gather(-1, idx))
