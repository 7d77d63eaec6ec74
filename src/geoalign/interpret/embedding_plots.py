"""Embedding analyses of the concept-aware paper (its Figs. 6-7): a 2-D map (UMAP) of image
embeddings with k-means clusters described by their countries and concepts, and a joint map of
image, location and concept embeddings with each image linked to its location.

k-means runs on the L2-normalised embeddings themselves (the 2-D map only displays them), so the
clusters do not depend on the projection. UMAP needs `umap-learn`; `method="pca"` needs nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from geoalign.errors import DataError
from geoalign.interpret.figures import save_figure

Method = Literal["umap", "pca", "tsne"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reduce_2d(
    x: np.ndarray,
    method: Method = "umap",
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> np.ndarray:
    """[N, D] -> [N, 2] with cosine geometry (rows are normalised first)."""
    x = _unit(x)
    if method == "umap":
        try:
            import umap
        except ModuleNotFoundError as err:
            raise DataError("UMAP needs umap-learn: pip install umap-learn (or use --pca)") from err
        reducer = umap.UMAP(
            n_neighbors=min(n_neighbors, max(2, len(x) - 1)),
            min_dist=min_dist,
            metric="cosine",
            random_state=seed,
            n_jobs=1,  # a fixed seed makes UMAP single-threaded anyway; say so to silence it
        )
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
        return TSNE(2, metric="cosine", random_state=seed, perplexity=perplexity).fit_transform(x)
    raise DataError(f"unknown projection {method!r}; use umap, pca or tsne")


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    if not 1 <= k <= len(x):
        raise DataError(f"k-means needs 1 <= k <= {len(x)} (the number of images), got {k}")
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(_unit(x))


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    countries: list[tuple[str, float]]  # (code, share)
    concepts: list[tuple[str, float]]  # (name, lift of mean activation over all images)

    def label(self) -> str:
        cc = ", ".join(f"{c} {100 * s:.0f}%" for c, s in self.countries[:3])
        cs = ", ".join(n for n, _ in self.concepts[:4])
        return f"C{self.cluster + 1} (n={self.size}): {cc}" + (f" | {cs}" if cs else "")


def summarize_clusters(
    clusters: np.ndarray,
    countries: np.ndarray,
    activations: np.ndarray | None = None,
    concepts: list[str] | None = None,
    *,
    n_concepts: int = 5,
) -> list[ClusterSummary]:
    """Per cluster: its most frequent countries and the concepts most over-expressed in it."""
    out = []
    overall = activations.mean(0) if activations is not None else None
    for c in range(int(clusters.max()) + 1):
        members = clusters == c
        cc = pd.Series(np.asarray(countries)[members]).replace("", "sea/unknown")
        shares = cc.value_counts(normalize=True).head(5)
        top: list[tuple[str, float]] = []
        if activations is not None and concepts is not None and members.any():
            lift = activations[members].mean(0) - overall
            top = [(concepts[j], float(lift[j])) for j in np.argsort(-lift)[:n_concepts]]
        out.append(
            ClusterSummary(
                c, int(members.sum()), [(str(k), float(v)) for k, v in shares.items()], top
            )
        )
    return out


def plot_clusters(
    xy: np.ndarray,
    clusters: np.ndarray,
    latlon: np.ndarray,
    summaries: list[ClusterSummary],
    path: str | Path,
    *,
    title: str = "Image embeddings",
    method: str = "UMAP",
) -> Path:
    """Left: the 2-D map coloured by cluster; right: where the photos were taken, same colours;
    below: what each cluster holds (countries, over-expressed concepts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(clusters.max()) + 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    colours = [cmap(c % cmap.N) for c in range(k)]
    fig = plt.figure(figsize=(15, 6.2 + 0.28 * k))
    grid = fig.add_gridspec(2, 2, height_ratios=[6, 0.3 * k + 0.4], width_ratios=[1, 1.45])
    ax = fig.add_subplot(grid[0, 0])
    for c in range(k):
        m = clusters == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=colours[c], alpha=0.7, linewidths=0)
        cx, cy = np.median(xy[m], axis=0)
        ax.text(cx, cy, f"C{c + 1}", fontsize=11, fontweight="bold", ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colours[c], "alpha": 0.85})  # fmt: skip
    ax.set_title(f"{title}: {method}, k-means k={k}", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(grid[0, 1])
    for c in range(k):
        m = clusters == c
        ax.scatter(latlon[m, 1], latlon[m, 0], s=5, color=colours[c], alpha=0.7, linewidths=0)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect(1.0)
    ax.set_title("Where the photos were taken (same colours)", fontsize=12)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1, :])
    ax.set_axis_off()
    for i, s in enumerate(summaries):
        ax.text(0.0, 1 - (i + 0.5) / max(len(summaries), 1), s.label(), color=colours[s.cluster],
                fontsize=10, va="center", transform=ax.transAxes)  # fmt: skip
    return save_figure(fig, path, dpi=140)


def modality_gap(
    image_emb: np.ndarray, loc_emb: np.ndarray, concept_emb: np.ndarray
) -> dict[str, float]:
    """Numbers behind the joint plot: paired image-location cosine, and distances between the
    modality centroids on the unit sphere (Liang et al.'s modality gap)."""
    img, loc, con = _unit(image_emb), _unit(loc_emb), _unit(concept_emb)
    ci, cl, cc = img.mean(0), loc.mean(0), con.mean(0)
    return {
        "paired_image_location_cosine": float((img * loc).sum(1).mean()),
        "gap_image_location": float(np.linalg.norm(ci - cl)),
        "gap_image_concept": float(np.linalg.norm(ci - cc)),
        "gap_location_concept": float(np.linalg.norm(cl - cc)),
    }


def _spread_subset(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of n points far apart (greedy farthest-point sampling from the first point)."""
    n = min(n, len(points))
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(chosen)


def _callouts(ax: Any, pts: np.ndarray, names: list[str], n: int, all_xy: np.ndarray) -> None:
    """Label n well-spread concepts with texts on a ring around the concept cloud and thin leader
    lines: concept points often sit in one tight clump where labels in place would overprint."""
    idx = _spread_subset(pts, n)
    centre = pts.mean(0)
    span = np.ptp(all_xy, axis=0)
    radius = 0.18 * float(np.hypot(*span))
    angles = np.arctan2(pts[idx, 1] - centre[1], pts[idx, 0] - centre[0])
    order = idx[np.argsort(angles)]
    slots = np.linspace(-np.pi, np.pi, len(order), endpoint=False) + np.pi / len(order)
    scale = span / max(float(np.hypot(*span)), 1e-9) * 1.4
    anchors = []
    for j, theta in zip(order, slots, strict=True):
        xt = centre[0] + radius * np.cos(theta) * scale[0]
        yt = centre[1] + radius * np.sin(theta) * scale[1]
        anchors.append((xt, yt))
        ax.annotate(
            names[j], pts[j], xytext=(xt, yt), fontsize=8, color="#1d6b1d",
            ha="left" if np.cos(theta) >= 0 else "right", va="center",
            arrowprops={"arrowstyle": "-", "color": "#1d6b1d", "lw": 0.5, "alpha": 0.7},
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )  # fmt: skip
    # widen the axes so that every label sits inside (labels extend outward from their anchor)
    every = np.vstack([all_xy, np.array(anchors)])
    lo, hi = every.min(0), every.max(0)
    pad = 0.12 * (hi - lo)
    ax.set_xlim(lo[0] - 1.6 * pad[0], hi[0] + 1.6 * pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])


def joint_embedding_plot(
    image_emb: np.ndarray,
    loc_emb: np.ndarray,
    concept_emb: np.ndarray,
    concept_names: list[str],
    path: str | Path,
    *,
    method: Method = "umap",
    n_lines: int = 150,
    n_labels: int = 14,
    seed: int = 0,
    title: str = "",
) -> tuple[Path, dict[str, Any]]:
    """One 2-D map of images, their locations and the concepts (the paper's Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = len(image_emb), len(concept_emb)
    xy = reduce_2d(np.concatenate([image_emb, loc_emb, concept_emb]), method, seed=seed)
    xi, xl, xc = xy[:n], xy[n : 2 * n], xy[2 * n :]
    gap = modality_gap(image_emb, loc_emb, concept_emb)
    fig, ax = plt.subplots(figsize=(10, 8))
    rng = np.random.default_rng(seed)
    for r in rng.choice(n, size=min(n_lines, n), replace=False):
        ax.plot([xi[r, 0], xl[r, 0]], [xi[r, 1], xl[r, 1]], color="#999999", lw=0.4, alpha=0.5)
    ax.scatter(xi[:, 0], xi[:, 1], s=6, color="#1f77b4", alpha=0.6, label=f"images ({n})")
    ax.scatter(xl[:, 0], xl[:, 1], s=6, color="#ff7f0e", alpha=0.6, label=f"locations ({n})")
    ax.scatter(xc[:, 0], xc[:, 1], s=22, color="#2ca02c", marker="^", label=f"concepts ({m})")
    _callouts(ax, xc, concept_names, n_labels, xy)
    ax.legend(loc="best", markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"{title + ': ' if title else ''}images, locations and concepts ({method.upper()})\n"
        f"paired image-location cosine {gap['paired_image_location_cosine']:.3f}; centroid gaps: "
        f"image-location {gap['gap_image_location']:.3f}, image-concept "
        f"{gap['gap_image_concept']:.3f}",
        fontsize=11,
    )
    return save_figure(fig, path, dpi=140), gap
