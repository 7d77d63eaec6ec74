"""Shared fixtures of the GeoSURGE backbone and fusion tests: one tiny CLIP vision tower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A seeded 2-layer CLIP vision tower (28 px, 16-d tokens and projection), saved to disk."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path
