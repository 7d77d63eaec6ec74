"""Is a miss of the region-coverage targets the calibration's fault or the dataset shift?

Fits the calibration (`inference.calibration.fit_calibration`) on half of the rows a quickstart
model held out of training (YFCC26k scene labels, the other 10%), and measures the coverage of
the 50%/90% regions and verify's false alarms at alpha = 0.05 both on the other half (the same
distribution: split-conformal regions should cover about p there) and on the Im2GPS3k test
queries (another dataset). Writes the section "Probabilistic outputs: calibration on held-out
rows vs Im2GPS3k" of benchmarks/RESULTS.md.

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
    write_section(
        "Probabilistic outputs: calibration on held-out rows vs Im2GPS3k", "\n".join(lines)
    )


if __name__ == "__main__":
    main()
