"""Every training objective of geoalign, in one place (torch only, no model classes).

- GeoCLIP (its eq. 4): an image-to-location InfoNCE whose candidate set is the batch's own (noisy)
  coordinates plus a queue of extra GPS negatives, for any number of augmented views and for
  data-parallel training, where each process holds a slice of the global batch: the candidates are
  then the whole global batch (gathered with gradients, so the result is the single-process loss
  on the concatenated batch) and the targets are offset by the slice start.
- Concept-aware alignment (Jia et al., eqs. 5-6): the Gaussian-kernel divergence between the
  concept scores of images and of their locations (`concept_divergence`).
- GeoSURGE (Daruna et al., eq. 1): one InfoNCE per partition level between images and learned
  geocell embeddings, summed over levels (`hierarchical_info_nce`), and the plain per-level
  classifier of its Table VI ablation (`hierarchical_classification_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def logits_from_embeddings(image_emb: Tensor, location_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """exp(logit_scale) · cos(image, location): [..., N, D] x [..., M, D] -> [..., N, M].

    Computed in at least float32 (a bf16 softmax over thousands of candidates loses the target)."""
    work = torch.promote_types(image_emb.dtype, torch.float32)
    img = F.normalize(image_emb.to(work), dim=-1)
    loc = F.normalize(location_emb.to(work), dim=-1)
    return logit_scale.to(work).exp() * (img @ loc.transpose(-1, -2))


def info_nce(
    image_emb: Tensor,
    location_emb: Tensor,
    logit_scale: Tensor,
    targets: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Image-to-location InfoNCE: row i of `image_emb` must pick column targets[i] (default i)."""
    logits = logits_from_embeddings(image_emb, location_emb, logit_scale)
    if targets is None:
        targets = torch.arange(logits.shape[-2], device=logits.device)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.expand(*logits.shape[:-1]).reshape(-1),
        label_smoothing=label_smoothing,
    )


def info_nce_with_queue(
    image_emb: Tensor,
    batch_location_emb: Tensor,
    logit_scale: Tensor,
    queue_emb: Tensor | None = None,
    *,
    target_offset: int = 0,
    reduce_views: str = "sum",
) -> Tensor:
    """GeoCLIP's loss (eq. 4) over P views, with a queue of GPS negatives.

    image_emb:          [P, b, D] or [b, D] -- this process's images (view-major).
    batch_location_emb: [P, B, D] or [B, D] -- every batch coordinate's embedding, view j's noisy
                        copy in row j (B = b on one process, the global batch under DDP).
    queue_emb:          [S, D] or None -- queue embeddings, shared by all views.
    target_offset:      where this process's images sit in the global batch.

    For view j the candidates are view j's batch locations then the queue; the target of image i is
    batch location `target_offset + i`. Views are summed (as in eq. 4) or averaged, images averaged.
    """
    if image_emb.dim() == 2:
        image_emb, batch_location_emb = image_emb[None], batch_location_emb[None]
    if image_emb.dim() != 3 or batch_location_emb.dim() != 3:
        raise ValueError(
            f"expected [P, b, D] images and [P, B, D] locations, got {tuple(image_emb.shape)} "
            f"and {tuple(batch_location_emb.shape)}"
        )
    n_views, b, _ = image_emb.shape
    if batch_location_emb.shape[0] != n_views:
        raise ValueError(f"{n_views} image views but {batch_location_emb.shape[0]} location views")
    if target_offset + b > batch_location_emb.shape[1]:
        raise ValueError("target_offset + local batch exceeds the number of batch locations")
    candidates = batch_location_emb
    if queue_emb is not None and queue_emb.shape[0] > 0:
        q = queue_emb.to(batch_location_emb.dtype)
        candidates = torch.cat([batch_location_emb, q[None].expand(n_views, -1, -1)], dim=1)
    logits = logits_from_embeddings(image_emb, candidates, logit_scale)  # [P, b, B + S]
    targets = torch.arange(target_offset, target_offset + b, device=logits.device)
    per_view = torch.stack(
        [F.cross_entropy(logits[j], targets) for j in range(n_views)]
    )  # mean over images, per view
    if reduce_views == "sum":
        return per_view.sum()
    if reduce_views == "mean":
        return per_view.mean()
    raise ValueError(f"reduce_views must be 'sum' or 'mean', got {reduce_views!r}")


# --- concept-aware alignment: the concept-space divergence (eqs. 5-6) -------------------------------

Divergence = Literal["paper", "cauchy-schwarz"]


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances [N, M], without a square root (finite gradients at 0)."""
    d = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp(min=0.0)


def concept_divergence(
    z_img: Tensor, z_loc: Tensor, sigma: float = 1.0, form: Divergence = "paper"
) -> Tensor:
    """Divergence between the concept scores of N images and of their N locations, [N, k] each.

    With the Gaussian kernel K(x, y) = exp(-||x - y||² / 2σ²) (eq. 5):

    - "paper" (eq. 6 as printed): 1/N² Σ_ij [log K(zi_img, zj_img) + log K(zi_loc, zj_loc)
      - 2 log K(zi_img, zj_loc)]. Because log K is a scaled squared distance, the sum collapses to
      ||mean(z_img) - mean(z_loc)||² / σ² exactly (expand the squares: the norms cancel and the
      cross terms leave the means); that closed form is what is computed (O(Nk) and free of the
      cancellation of the N² form). Zero whenever the two sets have the same mean.
    - "cauchy-schwarz": the kernel Cauchy-Schwarz divergence of Yin et al. (2025), which the paper
      cites as its inspiration: log mean K(img, img) + log mean K(loc, loc) - 2 log mean K(img, loc),
      with the logarithm outside the mean. Non-negative, and zero when the two empirical
      distributions coincide; it matches whole distributions, not only their means.

    Computed in at least float32 whatever the input dtype.
    """
    if z_img.shape != z_loc.shape or z_img.dim() != 2:
        raise ValueError(
            f"concept scores must both be [N, k], got {tuple(z_img.shape)} and {tuple(z_loc.shape)}"
        )
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    work = torch.promote_types(torch.promote_types(z_img.dtype, z_loc.dtype), torch.float32)
    a, b = z_img.to(work), z_loc.to(work)
    if form == "paper":
        diff = a.mean(0) - b.mean(0)
        return (diff * diff).sum() / (sigma**2)
    if form == "cauchy-schwarz":
        n2 = math.log(a.shape[0] * b.shape[0])
        scale = -1.0 / (2.0 * sigma**2)

        def log_mean_k(x: Tensor, y: Tensor) -> Tensor:
            return torch.logsumexp((scale * _sq_dists(x, y)).reshape(-1), 0) - n2

        return log_mean_k(a, a) + log_mean_k(b, b) - 2.0 * log_mean_k(a, b)
    raise ValueError(f"divergence form must be 'paper' or 'cauchy-schwarz', got {form!r}")


# --- GeoSURGE: one loss per partition level (eq. 1) ----------------------------------------------------

Negatives = Literal["batch", "all"]


@dataclass
class LevelLosses:
    """`total` = sum over levels of the per-level mean loss; `per_level` [L] (0 where no image has a
    cell); `counts` [L] images that contributed at each level."""

    total: Tensor
    per_level: Tensor
    counts: Tensor


def _check_labels(labels: Tensor, n_levels: int, batch: int) -> Tensor:
    if labels.dim() != 2 or labels.shape != (batch, n_levels):
        raise ValueError(f"labels must be [{batch}, {n_levels}], got {tuple(labels.shape)}")
    return labels.long()


def hierarchical_info_nce(
    visual: Tensor,
    tables: list[Tensor] | tuple[Tensor, ...],
    logit_scales: Tensor,
    labels: Tensor,
    *,
    negatives: Negatives = "batch",
    candidate_labels: Tensor | None = None,
) -> LevelLosses:
    """Sum over levels of the InfoNCE between images and the embeddings of their cells.

    visual [B, D]; tables[k] [n_k, D]; logit_scales [L] (log of 1/temperature: logits are
    exp(scale_k) * cosine); labels [B, L] cell index per level, -1 = ignored at that level.
    `candidate_labels` [B', L] (default `labels`): whose cells form the batch negatives, e.g. the
    labels of the whole global batch under data parallelism.
    """
    n_levels = len(tables)
    labels = _check_labels(labels, n_levels, visual.shape[0])
    cand = labels if candidate_labels is None else candidate_labels.long().to(labels.device)
    work = torch.promote_types(visual.dtype, torch.float32)
    v = F.normalize(visual.to(work), dim=-1)
    losses, counts = [], []
    for k, table in enumerate(tables):
        y = labels[:, k]
        valid = y >= 0
        counts.append(valid.sum())
        if not bool(valid.any()):
            losses.append(v.sum() * 0.0)  # keeps the graph (and DDP's gradient buckets) intact
            continue
        target = y[valid]
        if negatives == "batch":  # gather the present rows first: the table may be huge
            present = torch.cat([cand[:, k], target])
            cells, inverse = torch.unique(present[present >= 0], return_inverse=True)
            emb = F.normalize(table[cells].to(work), dim=-1)
            target = inverse[-target.shape[0] :]
        elif negatives == "all":
            emb = F.normalize(table.to(work), dim=-1)
        else:
            raise ValueError(f"negatives must be 'batch' or 'all', got {negatives!r}")
        logits = logit_scales[k].to(work).exp() * (v[valid] @ emb.T)
        losses.append(F.cross_entropy(logits, target))
    per_level = torch.stack(losses)
    return LevelLosses(per_level.sum(), per_level, torch.stack(counts))


def hierarchical_classification_loss(level_logits: list[Tensor], labels: Tensor) -> LevelLosses:
    """Sum over levels of cross entropy over all cells (the plain-classifier ablation)."""
    labels = _check_labels(labels, len(level_logits), level_logits[0].shape[0])
    losses, counts = [], []
    for k, logits in enumerate(level_logits):
        y = labels[:, k]
        valid = y >= 0
        counts.append(valid.sum())
        if not bool(valid.any()):
            losses.append(logits.float().sum() * 0.0)
            continue
        losses.append(F.cross_entropy(logits[valid].float(), y[valid]))
    per_level = torch.stack(losses)
    return LevelLosses(per_level.sum(), per_level, torch.stack(counts))
