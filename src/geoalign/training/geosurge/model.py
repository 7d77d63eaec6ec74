"""The GeoSURGE model a run trains: its cell hierarchy, the model itself, and what of it trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.errors import DataError
from geoalign.geo.cells import CellHierarchy, PartitionRules
from geoalign.models.geosurge import GeoSurge
from geoalign.nn.semantic_fusion import SemanticFusionConfig
from geoalign.training.geosurge.config import GeoSurgeTrainConfig


def build_hierarchy(cfg: GeoSurgeTrainConfig, train_coords: np.ndarray) -> CellHierarchy:
    """The configured hierarchy: loaded from cells.path, or built from the training coordinates.

    Building is deterministic (same rows, same rules, same cells), so every process of a run,
    and a resumed run, builds the same hierarchy without reading another's files; the first
    process also writes it to `<out_dir>/cells` (via a temporary folder and a rename)."""
    import shutil

    c = cfg.cells
    if c.path:
        return CellHierarchy.load(c.path)
    rules = PartitionRules(tau_min=c.tau_min, min_level=c.min_level)
    hierarchy = CellHierarchy.build(train_coords[:, 0], train_coords[:, 1], c.tau_max, rules)
    if min(hierarchy.sizes) == 0:
        raise DataError(
            f"cells: a level has no cell (sizes {hierarchy.sizes}) for {len(train_coords)} "
            f"training rows with tau_min {c.tau_min}; lower cells.tau_min or tau_max"
        )
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        saved = Path(cfg.trainer.out_dir) / "cells"
        tmp = saved.with_name(f".cells.tmp-{os.getpid()}")
        hierarchy.save(tmp)
        shutil.rmtree(saved, ignore_errors=True)
        os.replace(tmp, saved)
    return hierarchy


def build_model(
    cfg: GeoSurgeTrainConfig,
    hierarchy: CellHierarchy,
    feature_dim: int | None,
    backbone: Any = None,
) -> GeoSurge:
    m, visual = cfg.model, cfg.visual
    if m.init:
        model = GeoSurge.load(m.init, backbone=backbone)
        if tuple(model.hierarchy.sizes) != tuple(hierarchy.sizes):
            raise DataError(f"model.init {m.init}: its hierarchy differs from the configured one")
        model.hierarchy = hierarchy
        return model
    fusion = None
    if visual == "fusion":
        fusion = SemanticFusionConfig.from_dict(
            {
                "image_size": backbone.image_size,
                "visual_dim": backbone.token_dim,
                "out_dim": m.embed_dim,
                **m.fusion,
                "num_blocks": m.fusion_blocks,
            }
        )
    config = m.model_config(
        tuple(hierarchy.sizes),
        visual,
        feature_dim=feature_dim,
        image_size=backbone.image_size if backbone is not None else None,
        fusion=fusion,
    )
    return GeoSurge(config, hierarchy, backbone=backbone)


def set_trainable(model: GeoSurge) -> None:
    """Backbone: only the blocks GeoSURGE fine-tunes (the head after them only when the pooled
    output is used, i.e. without fusion); everything else of the model trains."""
    model.requires_grad_(True)
    if model.backbone is not None:
        model.backbone.requires_grad_(False)
        names = set(model._trained_backbone_names())
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(name in names)
    geo = model.geo
    if hasattr(geo, "logit_scales"):
        geo.logit_scales.requires_grad_(model.config.learn_temperature)
