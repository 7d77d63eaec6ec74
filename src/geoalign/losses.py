"""Contrastive losses for aligning images with locations.

GeoCLIP's objective (its eq. 4) is an image-to-location InfoNCE whose candidate set is the batch's
own (noisy) coordinates plus a queue of extra GPS negatives. It is written here for any number of
augmented views and for data-parallel training, where each process holds a slice of the global
batch: the candidates are then the whole global batch (gathered with gradients, so the result is
the single-process loss on the concatenated batch) and the targets are offset by the slice start.
"""

from __future__ import annotations

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
