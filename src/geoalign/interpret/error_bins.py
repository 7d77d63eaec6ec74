"""Concept activation by geolocation-error interval: the concept-aware paper's Table 3.

Each image's concept scores are made sparse (its top k kept, k = 20 in the paper); for every error
interval, each concept's median score is taken over the images of that interval in which the
concept is active (among the top k), and concepts are ranked by it. The median over all images
would be zero for almost every concept under top-20 sparsity, while the paper reports medians of
0.04-0.12, i.e. medians of retained scores. Concepts active in fewer than `min_count` images of an
interval are not ranked there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from geoalign.errors import DataError

PAPER_BINS_KM = (0.0, 25.0, 200.0, 750.0)


def bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"[{edges[i]:g}–{edges[i + 1]:g}) km" for i in range(len(edges) - 1)]


def activation_by_error_bin(
    activations: np.ndarray,
    dist_km: np.ndarray,
    concepts: list[str],
    *,
    edges: Sequence[float] = PAPER_BINS_KM,
    min_count: int = 5,
) -> pd.DataFrame:
    """Long table: bin, concept, median score (ms), images active, images in bin."""
    acts = np.asarray(activations, dtype=np.float64)
    d = np.asarray(dist_km, dtype=np.float64).reshape(-1)
    if acts.shape[0] != d.shape[0] or acts.shape[1] != len(concepts):
        raise DataError(
            f"{acts.shape} activations for {d.shape[0]} errors, {len(concepts)} concepts"
        )
    if list(edges) != sorted(edges) or len(edges) < 2:
        raise DataError(f"error-bin edges must be increasing, got {list(edges)}")
    rows = []
    for label, lo, hi in zip(bin_labels(edges), edges[:-1], edges[1:], strict=True):
        in_bin = (d >= lo) & (d < hi)
        sub = acts[in_bin]
        for j, name in enumerate(concepts):
            active = sub[:, j][sub[:, j] != 0]
            rows.append(
                {
                    "bin": label,
                    "concept": name,
                    "ms": float(np.median(active)) if len(active) >= min_count else np.nan,
                    "n_active": int(len(active)),
                    "n_images": int(in_bin.sum()),
                }
            )
    return pd.DataFrame(rows)


def top_bottom(table: pd.DataFrame, n: int = 8) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per bin: the n concepts with the highest and the n with the lowest median score."""
    out = {}
    for label, sub in table.groupby("bin", sort=False):
        ranked = sub.dropna(subset=["ms"])
        out[str(label)] = (ranked.nlargest(n, "ms"), ranked.nsmallest(n, "ms"))
    return out


def format_table3(table: pd.DataFrame, n: int = 8) -> str:
    """Markdown in the layout of the paper's Table 3 (top-n and lowest-n by median score)."""
    parts = top_bottom(table, n)
    labels = list(parts)
    header = "| rank | " + " | ".join(f"top {lab} | ms" for lab in labels)
    header += " | " + " | ".join(f"lowest {lab} | ms" for lab in labels) + " |"
    sep = "|" + "---|" * (1 + 4 * len(labels))
    lines = [header, sep]
    for r in range(n):
        cells = [str(r + 1)]
        for which in (0, 1):
            for lab in labels:
                t = parts[lab][which]
                if r < len(t):
                    row = t.iloc[r]
                    cells += [str(row["concept"]), f"{row['ms']:.4f}"]
                else:
                    cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
