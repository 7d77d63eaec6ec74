"""The downstream report: markdown tables, world maps of test predictions, the papers' numbers.

Rendered from `results.json` and `predictions/` alone, so `geoalign downstream report` can redraw a
finished run without re-running anything.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.downstream.experiment import load_results
from geoalign.io_atomic import atomic_output

REPORT_FILE = "README.md"

# Published numbers for comparable tasks (concept-aware paper, Table 2; both rows use an MLP on
# frozen location embeddings, tuned by random search on a validation set).
PAPER_NUMBERS: dict[str, dict[str, Any]] = {
    "temperature": {
        "paper": "Concept-aware alignment (Jia et al., arXiv 2509.01910), Table 2",
        "metric": "R2",
        "values": {"GeoCLIP": 0.7257, "Concept-aware": 0.7538},
        "their_data": "air temperature from Hooker, Duveiller & Cescatti (2018), satellite + "
        "stations; their split and sample size are not stated",
        "difference": "ours is ERA5's 0.25° annual-mean 2 m temperature (2000-2025) at area-uniform "
        "land points (Antarctica excluded), held out by 500 km blocks with a 100 km buffer. A smooth "
        "reanalysis annual mean is largely a function of latitude and elevation (raw lat/lon alone "
        "reaches R² ≈ 0.94 here), while a satellite + station product keeps local variation, so "
        "the levels are not comparable; the ordering of encoders is what carries over",
    },
    "country": {
        "paper": "Concept-aware alignment (Jia et al., arXiv 2509.01910), Table 2",
        "metric": "accuracy",
        "values": {"GeoCLIP": 0.9072, "Concept-aware": 0.9112},
        "their_data": "country classification of Klemmer et al. (2025); their points, classes and "
        "split are not stated in the paper",
        "difference": "ours: Natural Earth admin-0 units at area-uniform land points; whole 500 km "
        "blocks are held out, so test points sit far from training points and small countries may "
        "be absent from training (counted as errors); area-uniform sampling also weights big empty "
        "countries, not where people or photos are",
    },
}

GEOCLIP_SECTION_45 = (
    "GeoCLIP §4.5 (Table 4) probes its frozen location features on NUS-WIDE image tags (mAP 0.249 "
    "with GPS alone); that dataset is not available offline, so it has no row here."
)


def _fmt(mean: float, std: float, metric: str) -> str:
    if metric == "accuracy":
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.3f} ± {std:.3f}"


def _fmt1(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}" if metric == "accuracy" else f"{value:.3f}"


def _rows(results: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["task"], r["encoder"], r["probe"]): r for r in results["results"]}


def _metric_label(metric: str) -> str:
    return "accuracy %" if metric == "accuracy" else "R²"


def summary_table(results: dict, probe: str = "mlp") -> str:
    """Task × encoder, test mean ± std over seeds for one probe kind.

    Bold: the best mean and every mean within one combined seed standard deviation of it (those
    differences are within the probes' own noise).
    """
    rows = _rows(results)
    encoders = list(results["encoders"])
    head = "| task (metric) | prior | " + " | ".join(f"`{e}`" for e in encoders) + " |"
    lines = [head, "|" + "---|" * (len(encoders) + 2)]
    for task, info in results["tasks"].items():
        metric = info["metric"]
        cells = [rows.get((task, e, probe)) for e in encoders]
        present = [c for c in cells if c is not None]
        best = max(present, key=lambda c: c["test_mean"]) if present else None
        out = []
        for c in cells:
            if c is None:
                out.append("–")
                continue
            text = _fmt(c["test_mean"], c["test_std"], metric)
            out.append(f"**{text}**" if best is not None and _tied(c, best) else text)
        prior = _fmt1(info["prior_score"], metric)
        lines.append(f"| {task} ({_metric_label(metric)}) | {prior} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _tied(a: dict, b: dict) -> bool:
    """Means closer than one combined seed standard deviation."""
    return abs(a["test_mean"] - b["test_mean"]) <= math.hypot(a["test_std"], b["test_std"])


def comparison(a: dict | None, b: dict | None) -> str:
    """'better than' / 'worse than' / 'tied with' (within seed spread), for row a against row b."""
    if a is None or b is None:
        return "not compared with"
    if _tied(a, b):
        return "tied with"
    return "better than" if a["test_mean"] > b["test_mean"] else "worse than"


def findings(results: dict, probe: str = "mlp") -> str:
    """Per task: the official GeoCLIP encoder against raw lat/lon and against its untrained twin."""
    rows = _rows(results)
    lines = []
    for task, info in results["tasks"].items():
        g = rows.get((task, "geoclip", probe))
        if g is None:
            continue
        parts = []
        for other in ("raw-latlon", "untrained", "rff-only"):
            o = rows.get((task, other, probe))
            if o is None:
                continue
            diff = g["test_mean"] - o["test_mean"]
            scale = 100 if info["metric"] == "accuracy" else 1
            unit = " points" if info["metric"] == "accuracy" else ""
            parts.append(
                f"{comparison(g, o)} `{other}` ({diff * scale:+.{1 if scale == 100 else 3}f}{unit})"
            )
        if parts:
            lines.append(f"- **{task}**: `geoclip` is " + "; ".join(parts) + ".")
    return "\n".join(lines)


def task_table(results: dict, task: str) -> str:
    rows = _rows(results)
    metric = results["tasks"][task]["metric"]
    lines = [
        "| encoder | dim | probe | test (mean ± std) | per seed | val (best config) | best config |",
        "|---|---|---|---|---|---|---|",
    ]
    for enc, einfo in results["encoders"].items():
        for probe in results["config"]["probes"]:
            r = rows.get((task, enc, probe))
            if r is None:
                continue
            p = r["best_params"]
            cfg = (
                f"lr {p['lr']:.1e}, wd {p['weight_decay']:.0e}"
                if probe == "linear"
                else f"{p['n_layers']}×{p['hidden_dim']}, drop {p['dropout']}, lr {p['lr']:.1e}, "
                f"wd {p['weight_decay']:.0e}"
            )
            seeds = ", ".join(_fmt1(s, metric) for s in r["test_scores"])
            lines.append(
                f"| `{enc}` | {einfo['dim']} | {probe} | {_fmt(r['test_mean'], r['test_std'], metric)} "
                f"| {seeds} | {_fmt1(r['val_score'], metric)} | {cfg} |"
            )
    return "\n".join(lines)


def papers_table(results: dict) -> str:
    rows = _rows(results)
    lines = [
        "| task | source | their GeoCLIP | their concept-aware | our `geoclip` (MLP) | our `raw-latlon` "
        "(MLP) | our `untrained` (MLP) |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for task, ref in PAPER_NUMBERS.items():
        if task not in results["tasks"]:
            continue
        metric = ref["metric"]
        ours = []
        for enc in ("geoclip", "raw-latlon", "untrained"):
            r = rows.get((task, enc, "mlp"))
            ours.append(_fmt(r["test_mean"], r["test_std"], metric) if r else "not run")
        vals = ref["values"]
        lines.append(
            f"| {task} ({_metric_label(metric)}) | {ref['paper']} | {_fmt1(vals['GeoCLIP'], metric)} "
            f"| {_fmt1(vals['Concept-aware'], metric)} | " + " | ".join(ours) + " |"
        )
        notes.append(
            f"- **{task}** — theirs: {ref['their_data']}. Difference: {ref['difference']}."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + f"\n- {GEOCLIP_SECTION_45}"


# --- maps --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _border_segments() -> tuple[np.ndarray, ...]:
    """Country outlines from the Natural Earth polygons the tasks use, simplified for drawing."""
    import shapely

    from geoalign.downstream.sources import country_polygons

    simple = shapely.simplify(np.asarray(country_polygons().geometries, dtype=object), 0.25)
    rings = shapely.get_exterior_ring(shapely.get_parts(simple))
    return tuple(shapely.get_coordinates(r) for r in rings if not shapely.is_empty(r))


def _borders(ax) -> None:
    from matplotlib.collections import LineCollection

    ax.add_collection(
        LineCollection(list(_border_segments()), colors="0.55", linewidths=0.3, zorder=1)
    )


def _panel(ax, title: str) -> None:
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 85)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def render_maps(results: dict, out_dir: Path, probe: str = "mlp") -> dict[str, str]:
    """One PNG per task: ground truth and each encoder's seed-0 test predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(results)
    maps_dir = out_dir / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for task, info in results["tasks"].items():
        entries = [(e, rows.get((task, e, probe))) for e in results["encoders"]]
        entries = [
            (e, r) for e, r in entries if r is not None and (out_dir / r["predictions"]).is_file()
        ]
        if not entries:
            continue
        preds = {e: np.load(out_dir / r["predictions"]) for e, r in entries}
        first = next(iter(preds.values()))
        latlon, y_true = first["latlon"], first["y_true"]
        n = len(entries) + 1
        cols = min(3, n) if n != 4 else 2
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(
            nrows,
            cols,
            figsize=(4.6 * cols + 0.8, 2.1 * nrows + 0.5),
            squeeze=False,
            layout="constrained",
        )
        regression = info["kind"] == "regression"
        if regression:
            vmin, vmax = np.percentile(y_true, [2, 98])
            kw = dict(cmap="viridis", vmin=vmin, vmax=vmax)
        for ax in axes.flat:
            ax.set_axis_off()
        for k, ax in enumerate(axes.flat[:n]):
            ax.set_axis_on()
            _borders(ax)
            if k == 0:
                if regression:
                    sc = ax.scatter(latlon[:, 1], latlon[:, 0], c=y_true, s=2, zorder=2, **kw)
                else:
                    ax.scatter(
                        latlon[:, 1], latlon[:, 0], c=y_true % 20, cmap="tab20", s=2, zorder=2
                    )
                _panel(ax, f"{task}: reference labels (test points)")
                continue
            enc, r = entries[k - 1]
            y_pred = preds[enc]["y_pred"]
            if regression:
                ax.scatter(latlon[:, 1], latlon[:, 0], c=y_pred, s=2, zorder=2, **kw)
                title = f"{enc}: R² {r['test_mean']:.3f}"
            else:
                ok = y_pred == y_true
                ax.scatter(latlon[ok, 1], latlon[ok, 0], c="tab:green", s=2, zorder=2)
                ax.scatter(latlon[~ok, 1], latlon[~ok, 0], c="tab:red", s=2, zorder=3)
                title = f"{enc}: acc {100 * r['test_mean']:.1f}% (red = wrong)"
            _panel(ax, title)
        if regression:
            fig.colorbar(sc, ax=axes, shrink=0.8, label=f"{task} ({info.get('units', '')})")
        fig.suptitle(f"{task} — {probe} probe, seed 0, held-out test blocks", fontsize=10)
        path = maps_dir / f"{task}.png"
        try:
            with atomic_output(path) as tmp:
                fig.savefig(tmp, dpi=110)
        finally:
            plt.close(fig)
        written[task] = str(path.relative_to(out_dir))
    return written


# --- the markdown ------------------------------------------------------------------------------


def render_report(results_dir: Path, *, maps: bool = True) -> Path:
    """Write README.md (and maps/) into results_dir from its results.json; returns the path."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    cfg = results["config"]
    env = results["environment"]
    map_files = render_maps(results, results_dir) if maps else {}
    parts: list[str] = []
    parts.append("# Location embeddings on downstream geospatial tasks\n")
    cpu_min = sum(r.get("cpu_seconds", 0.0) for r in results["results"]) / 60
    load = env.get("load_average_at_start")
    reused = results.get("units_reused", 0)
    parts.append(
        f"Generated by `geoalign downstream run` on {datetime.now(UTC).date().isoformat()} "
        f"({'quick mode' if cfg.get('quick') else 'full run'}, torch {env['versions'].get('torch')}, "
        f"geoalign {env['versions'].get('geoalign')}). The probes took {cpu_min:.1f} CPU-minutes "
        f"in all, run in {cfg.get('jobs', 1)} single-threaded worker processes on "
        f"{env['cpu_count']} cores"
        + (
            f"; the last invocation took {results.get('total_seconds', 0) / 60:.1f} min wall"
            + (
                f" and reused {reused} units computed earlier in "
                f"{results.get('wall_seconds_of_reused_runs', 0) / 60:.1f} min wall"
                if reused
                else ""
            )
            + (f" (1-min load average at start {load[0]:.1f})" if load else "")
        )
        + ".\n"
    )
    parts.append(
        "Reproduce: `geoalign downstream run --tasks "
        f"{','.join(cfg['tasks'])} --encoders {','.join(cfg['encoders'])}"
        f"{' --quick' if cfg.get('quick') else ''}` (no network needed; all data come from "
        "installed packages).\n"
    )
    parts.append("## Summary: MLP probe, test split\n")
    parts.append(
        f"Mean ± standard deviation over {cfg['n_seeds']} probe seeds; `prior` is the label-free "
        "baseline (training mean for R², majority training class for accuracy). Bold: the best "
        "mean and any mean within one combined seed standard deviation of it.\n"
    )
    parts.append(summary_table(results, "mlp") + "\n")
    found = findings(results, "mlp")
    if found:
        parts.append(
            "Findings (MLP probe; 'tied' = within one combined seed standard deviation):\n"
        )
        parts.append(found + "\n")
    if "linear" in cfg["probes"]:
        parts.append("## Summary: linear probe, test split\n")
        parts.append(summary_table(results, "linear") + "\n")
    parts.append("## Beside the papers\n")
    parts.append(papers_table(results) + "\n")
    parts.append("## Protocol\n")
    split = f"{cfg['block_km']:g} km equal-area blocks, {cfg['buffer_km']:g} km buffer"
    parts.append(
        f"- Points: {cfg['n_points']:,} area-uniform land points per task (seed {cfg['seed']}), "
        "inside Natural Earth admin-0 polygons, Antarctica excluded; each task keeps the points its "
        "data labels.\n"
        f"- Split: {split}: blocks go to train/val/test (60/20/20); train and val points within the "
        "buffer of a later split are dropped, so no test point has a training neighbour closer than "
        "the buffer. Every encoder sees the same points and split.\n"
        f"- Probes: MLP (search over hidden width, depth, dropout, learning rate, weight decay; "
        f"{cfg['trials']['mlp']} draws) and linear ({cfg['trials'].get('linear', 0)} draws over "
        "learning rate and weight decay); AdamW, batch "
        f"{cfg['batch_size']}, at most {cfg['max_epochs']} epochs, early stopping on the val loss "
        f"(patience {cfg['patience']}), best epoch kept. The same seeded draws for every encoder. "
        f"The best val config is retrained with {cfg['n_seeds']} seeds; only those runs touch the "
        "test split.\n"
        "- Loss: MSE on standardised targets (regression), cross-entropy (classification). Inputs "
        "standardised with training statistics.\n"
    )
    parts.append("## Encoders\n")
    for enc, info in results["encoders"].items():
        parts.append(
            f"- `{enc}` ({info['dim']}-d): {info['description']}; fingerprint `{info['fingerprint']}`"
        )
    parts.append("")
    parts.append("## Tasks and data\n")
    for task, info in results["tasks"].items():
        counts = info["counts"]
        parts.append(f"### {task}\n")
        parts.append(
            f"Target: {info['target']}. Points: train {counts['train']:,}, val {counts['val']:,}, "
            f"test {counts['test']:,}"
            + (
                f"; {info['n_classes']} classes (classes with fewer than {info['min_class_count']} "
                f"points dropped: {len(info['classes_dropped_as_rare'])})"
                if info.get("n_classes")
                else ""
            )
            + ".\n"
        )
        for src in info["sources"]:
            parts.append(
                f"- Data: {src['name']} — package `{src['package']}` {src['version']}, file "
                f"`{src['file']}`; licence: {src['licence']}; cite: {src['citation']}."
            )
        parts.append("")
        parts.append(task_table(results, task) + "\n")
        if task in map_files:
            parts.append(f"![{task} predictions]({map_files[task]})\n")
    parts.append("## Caveats\n")
    parts.append(
        "- Spatial hold-out is harder than a random split: scores measure extrapolation to unseen "
        "regions, not interpolation. Expect lower numbers than papers that split at random.\n"
        "- The probe budget is small (CPU); every encoder gets the same one, so the comparison is "
        "fair but absolute numbers could rise with a larger search.\n"
        "- Seeds vary the probe's initialisation and batch order only; points and split are fixed.\n"
    )
    path = results_dir / REPORT_FILE
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
