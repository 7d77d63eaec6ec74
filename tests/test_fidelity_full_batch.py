"""GeoSURGE under gradient accumulation: the loss over an effective batch, and its gradients, are
those of one pass over that batch whatever the micro-batch size (eq. 1's negatives are the cells of
the whole batch, not of each micro-batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoalign.geo.cells import CellHierarchy, PartitionRules
from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig
from geoalign.training.geosurge import geosurge_config_from_dict
from geoalign.training.geosurge.module import GeoSurgeModule


def tiny(dropout: float) -> tuple[GeoSurge, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(0)
    centers = rng.uniform([-55, -170], [65, 170], size=(12, 2))
    which = rng.integers(0, 12, 600)
    pts = centers[which] + rng.normal(0, 1.0, (600, 2))
    hierarchy = CellHierarchy.build(
        pts[:, 0], pts[:, 1], tau_max=(300, 100, 30), rules=PartitionRules(tau_min=5)
    )
    torch.manual_seed(0)
    cfg = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes), embed_dim=16, feature_dim=12, feature_head="mlp"
    )
    model = GeoSurge(cfg, hierarchy)
    if dropout:  # a head that draws random numbers: the second pass must replay them
        model.head = torch.nn.Sequential(torch.nn.Dropout(dropout), model.head)
    feats = torch.tensor(np.eye(12)[which[:32]] + rng.normal(0, 0.3, (32, 12)), dtype=torch.float32)
    batch = {"features": feats, "coords": torch.tensor(pts[:32], dtype=torch.float32)}
    return model, batch


def step(micro: int | None, dropout: float) -> tuple[float, dict[str, torch.Tensor]]:
    model, batch = tiny(dropout)
    cfg = geosurge_config_from_dict(
        {"method": "geosurge", "optim": {"batch_size": 32, "micro_batch_size": micro}}
    )
    module = GeoSurgeModule(model, cfg)
    labels = model.assign(batch["coords"])
    torch.manual_seed(7)
    losses = module.full_batch_backward(batch, labels)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(losses.total), grads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_micro_batches_give_the_loss_and_gradients_of_one_batch(dropout):
    whole_loss, whole = step(None, dropout)
    micro_loss, micro = step(8, dropout)  # 4 micro-batches of 8
    assert micro_loss == pytest.approx(whole_loss, abs=1e-5)
    assert set(micro) == set(whole) and any(n.startswith("head.") for n in whole)
    for name, g in whole.items():
        assert torch.allclose(micro[name], g, atol=1e-5), name


def test_the_negatives_are_the_whole_batchs_cells():
    """Per micro-batch losses (what accumulation used to average) differ from the batch loss."""
    model, batch = tiny(0.0)
    labels = model.assign(batch["coords"])
    with torch.no_grad():
        visual = model.encode(batch)
        whole = float(model.loss(visual, labels).total)
        per_micro = np.mean(
            [float(model.loss(visual[i : i + 8], labels[i : i + 8]).total) for i in (0, 8, 16, 24)]
        )
    assert abs(per_micro - whole) > 1e-3
    assert step(8, 0.0)[0] == pytest.approx(whole, abs=1e-5)
