"""Benchmark: GeoSURGE training steps and inference at the paper's sizes (random weights).

We lack MP-16's coordinates, so the hierarchy comes from a synthetic sample: every cell of the
published tau_max=1000 partition (cells_50_1000) receives its published image count, uniformly
inside the cell (as benchmarks/cells.py does), scaled so the finest level (tau_max 500) has about
20K cells; then the paper's 7 levels (tau_min 50; tau_max 25000 ... 500) are built with geo/cells.

Reports:
  - hierarchy build time and cells per level;
  - inference, geographic part: level logits for 768-d embeddings, hierarchical product over the
    tree and top-5, per image at batch 1 and 64;
  - one training step (forward, backward, AdamW) of the raw model (no Lightning), for a tiny and a
    ViT-L/14-336-sized CLIP built from configs: frozen features only; no fusion (last block,
    norm and projection trainable); 3 fusion blocks (last block trainable); batch sizes small;
  - inference per image end to end with ViT-L/14-336 + 3 fusion blocks + a SegFormer-B0-sized
    segmenter (random weights), and with a OneFormer Swin-L-sized one when `--oneformer`.

    python benchmarks/geosurge.py [--data ../shared/data] [--target-cells 20000] [--oneformer]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _results import best_time, peak_rss_mb, write_section

from geoalign.geo.cells import (
    DEFAULT_TAU_MAX,
    CellHierarchy,
    PartitionRules,
    read_cell_csv,
    sample_in_cells,
)
from geoalign.models.base import log_probs, logits
from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig
from geoalign.nn.semantic_fusion import SemanticFusionConfig
from geoalign.training.geosurge import set_trainable


@torch.no_grad()
def _top_cells(model: GeoSurge, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k finest cells as every consumer ranks them (`models.base.logits` + `log_probs`)."""
    return torch.topk(log_probs(logits(model, queries, model.candidates())), k, dim=-1).indices


def clip_config(size: str):
    from transformers import CLIPVisionConfig

    if size == "tiny":
        return CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
            projection_dim=768,
        )
    return CLIPVisionConfig(  # openai/clip-vit-large-patch14-336
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )


def build_model(hierarchy, size: str, visual: str) -> GeoSurge:
    from geoalign.nn.backbones import ClipBackbone

    torch.manual_seed(0)
    backbone = None
    fusion = None
    feature_dim = 768
    if visual != "features":
        cfg = clip_config(size)
        backbone = ClipBackbone.from_config(cfg, name=f"clip-{size}")
        if visual == "fusion":
            fusion = SemanticFusionConfig(image_size=cfg.image_size, visual_dim=cfg.hidden_size)
        feature_dim = None
    config = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        visual=visual,
        feature_dim=feature_dim,
        backbone=f"clip-{size}",
        image_size=backbone.image_size if backbone is not None else None,
        trainable_blocks=1 if visual != "features" else 0,
        fusion=fusion,
    )
    model = GeoSurge(config, hierarchy, backbone=backbone)
    set_trainable(model)
    return model.train()


def step_time(model: GeoSurge, batch: int, repeats: int) -> tuple[float, int]:
    n_cells = model.config.level_sizes
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in n_cells], 1)
    if model.config.visual == "features":
        inputs = {"features": torch.randn(batch, 768)}
    else:
        s = model.backbone.image_size
        inputs = {"pixels": torch.randn(batch, 3, s, s)}
        if model.config.visual == "fusion":
            inputs["seg"] = torch.randint(0, 150, (batch, s, s))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        loss = model.loss(model.encode(inputs), labels).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_time(step, repeats=repeats, warmup=1), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--target-cells", type=int, default=20_000)
    parser.add_argument("--oneformer", action="store_true", help="also time OneFormer Swin-L")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines: list[str] = []

    # -- hierarchy ------------------------------------------------------------------------------
    part, _ = read_cell_csv(args.data / "cells_50_1000_copy.csv")
    rng = np.random.default_rng(args.seed)
    # ~ one finest cell per 215 samples at tau_max 500 (measured on this sample); scale to target
    scale = args.target_cells * 215 / part.counts.sum()
    counts = rng.binomial(part.counts, min(1.0, scale)) if scale < 1 else part.counts
    lat, lon = sample_in_cells(part.cell_ids, counts, rng)
    t0 = time.perf_counter()
    hierarchy = CellHierarchy.build(lat, lon, DEFAULT_TAU_MAX, PartitionRules(tau_min=50))
    t_build = time.perf_counter() - t0
    lines += [
        f"Hierarchy: {lat.size:,} synthetic points (published cells_50_1000 counts x "
        f"{min(scale, 1):.2f}), 7 levels built in {t_build:.1f} s; cells per level "
        f"(tau_max 25000 ... 500): {', '.join(map(str, hierarchy.sizes))}.",
        "",
    ]

    # -- inference, geographic part -------------------------------------------------------------
    model = build_model(hierarchy, "tiny", "features").eval()
    rows = ["| batch | ms / image | images / s |", "|---|---|---|"]
    for batch in (1, 64):
        q = model.queries(torch.randn(batch, 768))
        t = best_time(lambda q=q: _top_cells(model, q, 5), repeats=5)
        rows.append(f"| {batch} | {1000 * t / batch:.2f} | {batch / t:.0f} |")
    lines += [
        f"Inference, geographic part ({hierarchy.sizes[-1]:,} finest cells, "
        f"{sum(hierarchy.sizes):,} embeddings of 768-d; level logits + product over the tree "
        "+ top-5):",
        "",
        *rows,
        "",
    ]

    # -- training steps -------------------------------------------------------------------------
    rows = [
        "| backbone | visual input | batch | s / step | ms / image | trainable params |",
        "|---|---|---|---|---|---|",
    ]
    plan = [
        ("-", "features", 256, 5),
        ("tiny (2 x 64-d, 56 px)", "backbone", 8, 5),
        ("tiny (2 x 64-d, 56 px)", "fusion", 8, 5),
        ("ViT-L/14-336", "backbone", 2, 2),
        ("ViT-L/14-336", "fusion", 2, 2),
    ]
    for label, visual, batch, repeats in plan:
        size = "large" if label.startswith("ViT") else "tiny"
        net = build_model(hierarchy, size, visual)
        t, n_params = step_time(net, batch, repeats)
        names = {
            "features": "frozen features",
            "backbone": "no fusion",
            "fusion": "3 fusion blocks",
        }
        rows.append(
            f"| {label} | {names[visual]} | {batch} | {t:.3f} | {1000 * t / batch:.1f} | "
            f"{n_params / 1e6:.1f} M |"
        )
        del net
    lines += [
        "Training step (forward + backward + AdamW, raw model without Lightning; the 7 levels' "
        "embedding tables and temperatures always train):",
        "",
        *rows,
        "",
    ]

    # -- end-to-end inference per image -----------------------------------------------------------
    from transformers import SegformerConfig

    from geoalign.nn.segmenters import Segmenter

    net = build_model(hierarchy, "large", "fusion").eval()
    segmenters = [
        (
            "SegFormer-B0 (3.7 M)",
            Segmenter.from_config(SegformerConfig(num_labels=150), input_size=512),
        )
    ]
    if args.oneformer:
        from transformers import OneFormerConfig, SwinConfig

        swin = SwinConfig(
            image_size=384,
            embed_dim=192,
            depths=[2, 2, 18, 2],
            num_heads=[6, 12, 24, 48],
            window_size=12,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        cfg = OneFormerConfig(backbone_config=swin, num_labels=150, num_queries=250)
        oneformer = Segmenter.from_config(
            cfg, input_size=640, task_inputs=torch.ones(77, dtype=torch.long)
        )
        n = sum(p.numel() for p in oneformer.parameters()) / 1e6
        segmenters.append((f"OneFormer Swin-L ({n:.0f} M)", oneformer))
    rows = ["| part | ms / image |", "|---|---|"]
    pixels = torch.randn(1, 3, 336, 336)
    with torch.inference_mode():
        t_tokens = best_time(lambda: net.backbone.forward_tokens(pixels), repeats=2)
        tokens = net.backbone.forward_tokens(pixels)
        seg = torch.randint(0, 150, (1, 336, 336))
        t_fusion = best_time(lambda: net.fusion(seg, tokens), repeats=3)
        q = net.queries(net.fusion(seg, tokens))
        t_geo = best_time(lambda: _top_cells(net, q, 5), repeats=5)
        rows += [
            f"| CLIP ViT-L/14-336 tokens | {1000 * t_tokens:.0f} |",
            f"| semantic fusion, 3 blocks | {1000 * t_fusion:.1f} |",
            f"| hierarchical inference, top-5 | {1000 * t_geo:.1f} |",
        ]
        rgb = torch.rand(1, 3, 336, 336)
        for name, segmenter in segmenters:
            t_seg = best_time(lambda s=segmenter: s(rgb), repeats=2)
            rows.append(f"| {name} segmentation of the 336 px crop | {1000 * t_seg:.0f} |")
    lines += [
        "Inference per image, batch 1, random weights at the published sizes:",
        "",
        *rows,
        "",
        f"Peak RSS {peak_rss_mb():.0f} MB; torch threads {torch.get_num_threads()}.",
    ]
    write_section("GeoSURGE: training steps and hierarchical inference", "\n".join(lines))


if __name__ == "__main__":
    main()
