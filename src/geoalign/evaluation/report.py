"""Evaluation reports: a markdown page, the same content as JSON, per-image predictions, figures.

Files written to the output folder:
    report.md, report.json      accuracy table (ours, baselines, published numbers), run details
    predictions.csv             one row per query: id, truth, each method's prediction and error
    errors_hist.png             error distributions of the model's modes and the best baseline
    errors_map.png              where the model's (first mode's) errors are
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoalign.evaluation.harness import Evaluation, MethodResult
from geoalign.evaluation.published import Published, published_for
from geoalign.geo.metrics import THRESHOLDS_KM
from geoalign.io_atomic import atomic_output

ACC_KEYS = [f"acc@{t:g}km" for t in THRESHOLDS_KM]


def _row(r: MethodResult) -> dict[str, Any]:
    return {
        "method": r.name,
        "kind": r.kind,
        # unrounded: rounding here and again when printing would make 17.953 print as 17.9
        **{k: r.metrics[k] for k in ACC_KEYS},
        "median_km": r.metrics["median_km"],
        "geoscore": r.metrics["geoscore"],
        "seconds": round(r.seconds, 2),
        "notes": r.notes,
    }


def _published_row(p: Published) -> dict[str, Any]:
    return {
        "method": f"{p.method} — published",
        "kind": "published",
        **dict(zip(ACC_KEYS, p.acc, strict=True)),
        "median_km": None,
        "geoscore": None,
        "seconds": None,
        "notes": f"{p.source}, {p.table}",
    }


def table(ev: Evaluation, published: list[Published] | None = None) -> pd.DataFrame:
    radii = tuple(ev.meta.get("prior_radius_km") or ())
    published = published_for(ev.benchmark, radii) if published is None else published
    rows = [_row(r) for r in ev.results] + [_published_row(p) for p in published]
    return pd.DataFrame(rows)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown_table(frame: pd.DataFrame) -> str:
    head = (
        "| method | " + " | ".join(f"{t:g} km" for t in THRESHOLDS_KM) + " | median km | GeoScore |"
    )
    sep = "|---|" + "---:|" * (len(THRESHOLDS_KM) + 2)
    lines = [head, sep]
    for _, r in frame.iterrows():
        name = f"**{r['method']}**" if r["kind"] == "model" else r["method"]
        cells = [_fmt(r[k]) for k in ACC_KEYS] + [_fmt(r["median_km"], 0), _fmt(r["geoscore"], 0)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _comparison(ev: Evaluation) -> list[str]:
    """Plain sentences: how each model mode compares with the best baseline per threshold."""
    models = [r for r in ev.results if r.kind == "model"]
    baselines = [r for r in ev.results if r.kind == "baseline"]
    if not models or not baselines:
        return []
    lines = []
    for key, t in (("acc@750km", "750 km"), ("acc@2500km", "2,500 km")):
        best = max(baselines, key=lambda r: r.metrics[key])
        for m in models:
            diff = m.metrics[key] - best.metrics[key]
            verb = "above" if diff > 0 else ("level with" if diff == 0 else "below")
            lines.append(
                f"- {m.name}: {m.metrics[key]:.1f}% within {t}, {abs(diff):.1f} points {verb} "
                f"the best baseline ({best.name}, {best.metrics[key]:.1f}%)."
            )
    return lines


def probabilistic_markdown(ev: Evaluation) -> list[str]:
    """The distributions section: region coverage, verify rates, recall vs area, risk-coverage."""
    rows = [r for r in ev.results if r.probabilistic]
    if not rows:
        return []
    lines = [
        "## Distributions: regions, verification, abstention",
        "",
        "Each model's distribution smoothed on S2 cells (`geoalign.inference.distribution`). "
        "Coverage: the share of true locations inside the p-region (calibrated regions: about "
        "p). verify: claims at the true location flagged at alpha = 0.05 (false alarms), and "
        "claims moved by a distance flagged (power). Recall vs area: the share of true locations "
        "inside a highest-density region of at most that area.",
        "",
        "Calibrated models show the uncalibrated coverage and false-alarm rate in brackets.",
        "",
        "| model | coverage 50% | coverage 90% | mean abs. coverage error | median 90% area km² "
        "| verify false alarms | flagged at 200 / 750 / 2500 km | recall ≤ 10⁴ / 10⁵ / 10⁶ km² |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r.probabilistic
        rel, power, recall = s["reliability"], s["verify_power@0.05"], s["recall_vs_area"]
        raw = s.get("uncalibrated")
        c50, c90 = f"{rel[0.5]:.1%}", f"{rel[0.9]:.1%}"
        alarms = f"{s['verify_false_alarm@0.05']:.1%}"
        if raw:
            c50 += f" ({raw['reliability'][0.5]:.1%})"
            c90 += f" ({raw['reliability'][0.9]:.1%})"
            alarms += f" ({raw['verify_false_alarm@0.05']:.1%})"
        lines.append(
            f"| {r.name} | {c50} | {c90} | {s['calibration_error']:.3f} "
            f"| {s['median_area90_km2']:,.0f} | {alarms} "
            f"| {power[200.0]:.0%} / {power[750.0]:.0%} / {power[2500.0]:.0%} "
            f"| {recall[1e4]:.0%} / {recall[1e5]:.0%} / {recall[1e6]:.0%} |"
        )
    lines += ["", *_calibration_lines(rows)]
    lines += [
        "",
        "Risk vs coverage (answering only the most localizable photos: smallest 90% region "
        "first; the error of the median estimate, or of the first row when there is none):",
        "",
        "| model | " + " | ".join(f"{int(a * 100)}%" for a in (0.1, 0.3, 0.5, 0.7, 1.0)) + " |",
        "|---|" + "---:|" * 5,
    ]
    for r in rows:
        by = {round(x["answered"], 2): x for x in r.probabilistic["risk_coverage"]}
        cells = [
            f"{by[a]['median_km']:,.0f} km / {by[a]['acc@750km']:.0f}%"
            for a in (0.1, 0.3, 0.5, 0.7, 1.0)
        ]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "(median error / accuracy within 750 km among the answered)", ""]
    return lines


def _calibration_lines(rows: list[Any]) -> list[str]:
    """Per model: the smoothing level and logit (temperature) factor its distributions used,
    fitted (with what on) or the defaults."""
    from geoalign.inference.distribution import DEFAULT_LEVEL

    lines = ["Smoothing and temperature per model:", ""]
    for r in rows:
        cal = r.probabilistic.get("calibration")
        if not cal:
            lines.append(
                f"- {r.name}: S2 level {DEFAULT_LEVEL} box kernel, logit factor 1 (defaults, "
                "not calibrated)"
            )
            continue
        nll = ""
        if cal.get("nll_before") is not None and cal.get("nll_after") is not None:
            nll = f"; NLL per km² {cal['nll_before']:.3f} -> {cal['nll_after']:.3f}"
        lines.append(
            f"- {r.name}: fitted S2 level {cal['level']} box kernel, logit factor "
            f"{cal['scale']:.3g} (temperature divided by it){nll}; fitted on "
            f"{cal.get('fitted_on') or 'unstated rows'} ({cal.get('n', 0):,} rows)"
        )
    return lines


def to_markdown(ev: Evaluation, frame: pd.DataFrame | None = None) -> str:
    frame = table(ev) if frame is None else frame
    meta = ev.meta
    lines = [
        f"# Geo-localization report: {ev.benchmark}",
        "",
        f"- queries: {len(ev.truth):,}",
        f"- gallery: {ev.gallery}",
    ]
    for key in ("model", "features", "ten_crop", "training", "notes"):
        if meta.get(key) not in (None, ""):
            lines.append(f"- {key.replace('_', '-')}: {meta[key]}")
    lines += [
        "",
        "Accuracy (% of queries within each distance of the truth). Bold rows: the evaluated "
        'model; other rows: baselines on the same features and gallery; "published" rows: the '
        "papers' numbers with their image backbones on the benchmark photos (comparable only when "
        "this run used the same features).",
        "",
        markdown_table(frame),
        "",
    ]
    comparison = _comparison(ev)
    if comparison:
        lines += ["What the alignment adds over the baselines:", "", *comparison, ""]
    lines += probabilistic_markdown(ev)
    lines += [
        "Files: `predictions.csv` (per query), `errors_hist.png`, `errors_map.png`, "
        "`reliability.png` (with distributions), `report.json`.",
        "",
    ]
    return "\n".join(lines)


def predictions_frame(ev: Evaluation) -> pd.DataFrame:
    out = pd.DataFrame({"id": ev.ids, "true_lat": ev.truth[:, 0], "true_lon": ev.truth[:, 1]})
    for r in ev.results:
        key = r.name
        out[f"{key} | lat"] = r.latlon[:, 0]
        out[f"{key} | lon"] = r.latlon[:, 1]
        out[f"{key} | km"] = np.round(r.dist_km, 3)
        if r.prob is not None:
            out[f"{key} | p"] = r.prob
    return out


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write every report file; returns their paths by name."""
    from geoalign.evaluation.plots import error_histogram, error_map

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = table(ev)
    paths = {
        "markdown": out / "report.md",
        "json": out / "report.json",
        "predictions": out / "predictions.csv",
        "histogram": out / "errors_hist.png",
        "map": out / "errors_map.png",
    }
    with atomic_output(paths["markdown"]) as tmp:
        tmp.write_text(to_markdown(ev, frame))
    payload = {
        "benchmark": ev.benchmark,
        "n_queries": int(len(ev.truth)),
        "gallery": ev.gallery,
        "gallery_size": ev.gallery_size,
        "meta": ev.meta,
        "results": [
            {
                **_row(r),
                "mode": r.mode,
                "metrics": r.metrics,
                **({"probabilistic": r.probabilistic} if r.probabilistic else {}),
            }
            for r in ev.results
        ],
        "published": [
            _published_row(p)
            for p in published_for(ev.benchmark, tuple(ev.meta.get("prior_radius_km") or ()))
        ],
    }
    with atomic_output(paths["json"]) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
    with atomic_output(paths["predictions"]) as tmp:
        predictions_frame(ev).to_csv(tmp, index=False)
    models = [r for r in ev.results if r.kind == "model"]
    baselines = [r for r in ev.results if r.kind == "baseline"]
    shown = {r.name: r.dist_km for r in models}
    if baselines:
        best = max(baselines, key=lambda r: r.metrics["acc@750km"])
        shown[best.name] = best.dist_km
    error_histogram(paths["histogram"], shown, title=f"{ev.benchmark}: error distribution")
    curves = {r.name: r.probabilistic["reliability"] for r in models if r.probabilistic}
    if curves:
        from geoalign.evaluation.plots import reliability_plot

        paths["reliability"] = reliability_plot(
            out / "reliability.png", curves, title=f"{ev.benchmark}: region coverage"
        )
    main = models[0] if models else (baselines[0] if baselines else None)
    if main is not None:
        error_map(
            paths["map"], ev.truth, main.latlon, main.dist_km, title=f"{ev.benchmark}: {main.name}"
        )
    else:
        del paths["map"]
    return paths
