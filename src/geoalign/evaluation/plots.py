"""Report figures: the distribution of errors, and where the errors are."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoalign.geo.metrics import THRESHOLD_NAMES, THRESHOLDS_KM
from geoalign.io_atomic import atomic_output


def error_histogram(
    path: str | Path,
    errors: dict[str, np.ndarray],
    *,
    title: str = "",
    thresholds: Sequence[float] = THRESHOLDS_KM,
) -> Path:
    """Step histograms of log-scaled errors (km), one per method, with the threshold lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.logspace(-1, np.log10(20_100), 61)
    for name, d in errors.items():
        d = np.clip(np.asarray(d, dtype=np.float64), bins[0], bins[-1])
        ax.hist(
            d,
            bins=bins,
            histtype="step",
            linewidth=1.6,
            label=f"{name} (median {np.median(d):,.0f} km)",
        )
    ax.set_xscale("log")
    for t in thresholds:
        ax.axvline(t, color="0.6", linestyle=":", linewidth=1)
        ax.annotate(
            f"{t:g} km\n{THRESHOLD_NAMES.get(int(t), '')}",
            (t, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 4),
            textcoords="offset points",
            fontsize=7,
            color="0.35",
        )
    ax.set_xlabel("great-circle error (km, log scale)")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path


def _draw_countries(ax) -> bool:
    """Country outlines when the Natural Earth data is available; False otherwise."""
    try:
        import shapely
        from matplotlib.collections import LineCollection

        from geoalign.geo.regions import load_countries

        geoms = shapely.simplify(load_countries().geometries, tolerance=0.2)
        rings = shapely.get_parts(shapely.boundary(shapely.get_parts(geoms)))
        lines = [np.asarray(shapely.get_coordinates(r)) for r in rings]
        ax.add_collection(LineCollection(lines, colors="0.55", linewidths=0.4, zorder=1))
        return True
    except Exception:  # the map is still useful without borders
        return False


def error_map(
    path: str | Path,
    truth: np.ndarray,
    pred: np.ndarray,
    dist_km: np.ndarray,
    *,
    title: str = "",
    max_lines: int = 300,
    seed: int = 0,
) -> Path:
    """World map: each query at its true location, coloured by error; thin lines to a sample of
    predictions show where the errors go."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.03, 0.08, 0.86, 0.86))
    ax.set_facecolor("#eef4fa")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    _draw_countries(ax)
    rng = np.random.default_rng(seed)
    show = rng.choice(len(truth), size=min(max_lines, len(truth)), replace=False)
    for i in show:
        ax.plot(
            [truth[i, 1], pred[i, 1]],
            [truth[i, 0], pred[i, 0]],
            color="0.3",
            alpha=0.15,
            linewidth=0.5,
            zorder=2,
        )
    d = np.clip(np.asarray(dist_km, dtype=np.float64), 1.0, 20_100)
    order = np.argsort(-d)  # small errors drawn last, on top
    points = ax.scatter(
        truth[order, 1],
        truth[order, 0],
        c=d[order],
        s=9,
        cmap="viridis_r",
        norm=LogNorm(vmin=1, vmax=20_000),
        linewidths=0,
        zorder=3,
    )
    cax = fig.add_axes((0.91, 0.15, 0.015, 0.7))
    bar = fig.colorbar(points, cax=cax)
    bar.set_label("error (km)")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path


def reliability_plot(
    path: str | Path, curves: dict[str, dict[float, float]], *, title: str = ""
) -> Path:
    """Coverage of the p-regions against p, one line per model (the diagonal is calibrated)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="calibrated")
    for name, curve in curves.items():
        ps = sorted(curve)
        ax.plot(ps, [curve[p] for p in ps], marker="o", linewidth=1.6, label=name)
    ax.set_xlabel("nominal probability p of the region")
    ax.set_ylabel("share of true locations inside the p-region")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path
