"""Is a miss of the region-coverage targets the calibration's fault or the dataset shift?

Fits the calibration (`inference.calibration.fit_calibration`) on half of the rows a quickstart
model held out of training (YFCC26k scene labels, the other 10%), and measures the coverage of
the 50%/90% regions and verify's false alarms at alpha = 0.05 both on the other half (the same
distribution: split-conformal regions should cover about p there) and on the Im2GPS3k test
queries (another dataset). Writes the section "Probabilistic outputs: calibration on held-out
rows vs Im2GPS3k" of benchmarks/RESULTS.md.

Then it asks what kind of shift it is, with three diagnostics on the first halving (computed
from the regions' raw masses at the fitted factor and level, so the plain split-conformal row
reproduces the library's calibration):
- Mondrian conformal by localizability: one conformal quantile per quintile of the 90% region's
  area. It would close the gap if Im2GPS3k only held more hard photos than YFCC26k.
- Covariate-shift weighted conformal (Tibshirani et al. 2019): calibration rows weighted by
  p(Im2GPS3k | descriptor) / p(YFCC26k | descriptor) from a logistic-regression domain
  classifier (cross-fitted; it sees Im2GPS3k's descriptors, never its locations). It would close
  the gap if the descriptors' distribution were all that changed.
- Calibrated on half of Im2GPS3k, measured on the other half: the procedure on exchangeable rows
  of the test collection (what `geoalign calibrate` on labelled photos of a user's own domain
  does). A diagnostic only; the quickstart never calibrates on its test set.
- Calibrated on Im2GPS (237 photos, another benchmark drawn from the same Flickr collection as
  Im2GPS3k), measured on all of Im2GPS3k: labelled photos of the target domain that are not the
  test set.

    geoalign train src/geoalign/configs/geoclip/quickstart.yaml --out RUN --no-eval
    python benchmarks/calibration_holdout.py --model RUN/model [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

PS = (0.5, 0.9)  # the region probabilities whose coverage is measured (the targets)


def _measure(geo, feats: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from geoalign.evaluation.probabilistic import ProbabilisticStats

    stats = ProbabilisticStats.empty(len(truth))
    rng = np.random.default_rng(0)
    for s in range(0, len(truth), 256):
        q = geo.embed_features(torch.as_tensor(feats[s : s + 256]).float())
        stats.fill(slice(s, s + len(q)), geo.distributions(q), truth, rng)
    rel = stats.reliability()
    return {"lo": rel[PS[0]], "hi": rel[PS[1]], "alarm": stats.false_alarm_rate()}


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _row(name: str, fitted: str, n: int, m: dict[str, float]) -> str:
    cells = (name, fitted, f"{n:,}", _pct(m["lo"]), _pct(m["hi"]), _pct(m["alarm"]))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a quickstart-trained checkpoint folder")
    parser.add_argument("--seeds", type=int, default=3, help="random halvings of the held-out rows")
    parser.add_argument("--gallery", default="train:10000", help="as the quickstart's eval")
    args = parser.parse_args()

    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.evaluation.harness import make_gallery
    from geoalign.inference.calibration import fit_calibration
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import checkpoint_config, load_model
    from geoalign.training.data import fraction_mask

    data = checkpoint_config(args.model).get("provenance", {}).get("config", {}).get("data", {})
    fraction, fseed = float(data.get("fraction", 0.9)), int(data.get("fraction_seed", 0))
    x, y, _ = load_scene_label_set("yfcc26k")
    held = np.flatnonzero(~fraction_mask(len(y), fraction, fseed))
    test_x, test_y, _ = load_scene_label_set("im2gps3k")
    coords, gname = make_gallery(args.gallery, y, seed=0)
    geo = Geolocator(load_model(args.model), gallery=coords, cache=False)
    lines = [
        f"Quickstart GeoCLIP model (`geoalign train configs/geoclip/quickstart.yaml`); gallery "
        f"{gname}; {len(held):,} held-out YFCC26k rows (data.fraction {fraction:g}, seed {fseed}) "
        f"split in halves with {args.seeds} seed(s): the calibration is fitted on one half and "
        "measured on the other half (the same distribution) and on Im2GPS3k (another one). "
        "verify at alpha 0.05.",
        "",
    ]
    cov = [f"coverage of the {100 * p:g} percent region" for p in PS]
    lines += [f"| split | fitted on | rows | {cov[0]} | {cov[1]} | verify false alarms |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    geo.set_calibration(None)
    for name, (fx, fy) in {
        "held-out YFCC26k": (x[held], y[held]),
        "Im2GPS3k": (test_x, test_y),
    }.items():
        m = _measure(geo, fx, fy)
        lines.append(_row(name, "uncalibrated", len(fy), m))
        print(lines[-1], flush=True)
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(held)
        fit, check = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
        geo.set_calibration(None)
        cal = fit_calibration(geo, x[fit], y[fit], fitted_on=f"half {seed}")
        geo.set_calibration(cal)
        for name, (fx, fy) in {
            "other half of held-out YFCC26k": (x[check], y[check]),
            "Im2GPS3k": (test_x, test_y),
        }.items():
            m = _measure(geo, fx, fy)
            fitted = f"half {seed} ({len(fit):,} rows; level {cal.level}, factor {cal.scale:.3g})"
            lines.append(_row(name, fitted, len(fy), m))
            print(lines[-1], flush=True)
    lines += ["", *_shift_diagnostics(geo, x, y, held, test_x, test_y)]
    write_section(
        "Probabilistic outputs: calibration on held-out rows vs Im2GPS3k", "\n".join(lines)
    )


def _raw_levels(geo, feats: np.ndarray, truth: np.ndarray, cal) -> tuple[np.ndarray, np.ndarray]:
    """(level of the truth, 90% region area) per row at the calibration's factor and level,
    before its conformal masses (the numbers the conformal quantiles are taken of)."""
    levels, areas = np.empty(len(truth)), np.empty(len(truth))
    for s in range(0, len(truth), 256):
        q = geo.embed_features(torch.as_tensor(feats[s : s + 256]).float())
        dists = geo.distributions(q, level=cal.level, scale=cal.scale)
        for j, d in enumerate(dists, start=s):
            levels[j] = d.level_of(truth[j : j + 1])[0]
            areas[j] = d.region(0.9, countries=False).area_km2
    return levels, areas


def _quantile(levels: np.ndarray, p: float, weights: np.ndarray | None = None) -> float:
    """The split-conformal quantile of calibration levels (weighted: the weighted quantile with
    the test point's weight at +inf, taken as the mean weight; Tibshirani et al. 2019)."""
    if weights is None:
        n = len(levels)
        return float(np.sort(levels)[min(n, int(np.ceil((n + 1) * p))) - 1])
    order = np.argsort(levels)
    w = weights[order] / (weights.sum() + weights.mean())
    k = int(np.searchsorted(np.cumsum(w), p))
    return float(levels[order][k]) if k < len(levels) else 1.0


def _coverage_row(name: str, test_levels: np.ndarray, limits: np.ndarray | list) -> str:
    cov = [float((test_levels <= np.asarray(lim)).mean()) for lim in limits]
    return f"| {name} | {_pct(cov[0])} | {_pct(cov[1])} | {_pct(1 - cov[2])} |"


def _shift_diagnostics(geo, x, y, held, test_x, test_y) -> list[str]:
    """The module doc's three diagnostics, as table rows measured on Im2GPS3k."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    from geoalign.data.scene_labels import load_scene_label_set
    from geoalign.inference.calibration import fit_calibration

    order = np.random.default_rng(0).permutation(held)
    fit = np.sort(order[: len(order) // 2])
    geo.set_calibration(None)
    cal = fit_calibration(geo, x[fit], y[fit], fitted_on="half 0")
    fit_lv, fit_area = _raw_levels(geo, x[fit], y[fit], cal)
    test_lv, test_area = _raw_levels(geo, test_x, test_y, cal)
    ps = (*PS, 0.95)  # 0.95: verify's level at alpha 0.05 (false alarms = 1 - its coverage)
    out = [
        "Why Im2GPS3k is covered less (calibration half 0; measured on all Im2GPS3k photos):",
        "",
        "| calibration | coverage of the 50 percent region | coverage of the 90 percent "
        "region | verify false alarms |",
        "|---|---:|---:|---:|",
        _coverage_row(
            "split conformal (the library's)", test_lv, [_quantile(fit_lv, p) for p in ps]
        ),
    ]
    print(out[-1], flush=True)
    edges = np.quantile(fit_area, np.linspace(0, 1, 6)[1:-1])
    fit_bin, test_bin = np.digitize(fit_area, edges), np.digitize(test_area, edges)
    per_row = [
        np.array([_quantile(fit_lv[fit_bin == b], p) for b in range(5)])[test_bin] for p in ps
    ]
    shares = np.bincount(test_bin, minlength=5) / len(test_bin)
    name = "Mondrian by the 90 percent region's area (Im2GPS3k photos per YFCC26k quintile: "
    out.append(
        _coverage_row(name + " / ".join(f"{100 * s:.0f} %" for s in shares) + ")", test_lv, per_row)
    )
    print(out[-1], flush=True)
    feats = np.vstack([x[fit], test_x]).astype(np.float32)
    domain = np.r_[np.zeros(len(fit)), np.ones(len(test_x))]
    clf = LogisticRegression(C=0.1, max_iter=2000)
    p_all = cross_val_predict(clf, feats, domain, cv=5, method="predict_proba")[:, 1]
    auc = roc_auc_score(domain, p_all)
    w = p_all[: len(fit)] / (1 - p_all[: len(fit)])  # density ratio up to a constant
    ess = w.sum() ** 2 / (w**2).sum()
    name = f"covariate-shift weighted (domain classifier AUC {auc:.2f}, effective rows {ess:,.0f})"
    out.append(_coverage_row(name, test_lv, [_quantile(fit_lv, p, w) for p in ps]))
    print(out[-1], flush=True)
    halves = np.random.default_rng(0).permutation(len(test_y))
    a, b = np.sort(halves[: len(halves) // 2]), np.sort(halves[len(halves) // 2 :])
    cal_t = fit_calibration(geo, test_x[a], test_y[a], fitted_on="Im2GPS3k half")
    geo.set_calibration(cal_t)
    m = _measure(geo, test_x[b], test_y[b])
    geo.set_calibration(None)
    out.append(
        f"| fitted on half of Im2GPS3k (level {cal_t.level}, factor {cal_t.scale:.3g}), "
        f"measured on the other {len(b):,} | {_pct(m['lo'])} | {_pct(m['hi'])} | "
        f"{_pct(m['alarm'])} |"
    )
    print(out[-1], flush=True)
    ix, iy, _ = load_scene_label_set("im2gps")
    cal_i = fit_calibration(geo, ix, iy, fitted_on="Im2GPS")
    geo.set_calibration(cal_i)
    m = _measure(geo, test_x, test_y)
    geo.set_calibration(None)
    out.append(
        f"| fitted on Im2GPS ({len(iy)} photos of the same Flickr collection; level "
        f"{cal_i.level}, factor {cal_i.scale:.3g}) | {_pct(m['lo'])} | {_pct(m['hi'])} | "
        f"{_pct(m['alarm'])} |"
    )
    print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    main()
