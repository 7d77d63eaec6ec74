"""Retrieval-augmented candidates vs plain gallery retrieval, in the same run (issue 13 part 7).

The quickstart's GeoCLIP alignment (scene-label features, YFCC26k -> Im2GPS3k) evaluated on
each gallery twice: as it is, and with each query's k nearest training photos (in the model's
query space) added to its candidates (`Geolocator.with_training_neighbours`). Needs the
quickstart's output: `geoalign quickstart --out out/quickstart` first.

    python benchmarks/retrieval_augmented.py [--model out/quickstart/run/model] [--k 4,16,64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

THRESHOLDS = (1, 25, 200, 750, 2500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="out/quickstart/run/model")
    parser.add_argument("--train", default="scene-labels:yfcc26k")
    parser.add_argument("--benchmark", default="im2gps3k")
    parser.add_argument("--galleries", default="train:10000,geoclip-100k")
    parser.add_argument("--k", default="16", help="Neighbour counts, comma-separated.")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no trained model there; run `geoalign quickstart` first")

    from geoalign.evaluation import queries as Q
    from geoalign.evaluation.harness import evaluate_model, make_gallery
    from geoalign.evaluation.run import BASELINE_ROWS
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model

    queries = Q.from_scene_labels(args.benchmark)
    train = Q.resolve(args.train, max_rows=BASELINE_ROWS, seed=0)
    net = load_model(args.model)
    ks = [int(k) for k in args.k.split(",")]
    lines = [
        f"Model `{args.model}` ({net.method}); queries: {args.benchmark} "
        f"({len(queries.truth):,}, {queries.description}); training photos for the neighbours: "
        f"{args.train} ({len(train.truth):,} rows). Accuracy in % within each distance.",
        "",
        "| gallery | candidates | estimate | "
        + " | ".join(f"{t} km" for t in THRESHOLDS)
        + " | median km |",
        "|---|---|---|" + "---:|" * (len(THRESHOLDS) + 1),
    ]
    for spec in args.galleries.split(","):
        gallery, name = make_gallery(spec, train.truth, seed=0)
        plain = Geolocator(net, gallery=gallery, cache=True)
        runs = [("gallery only", plain)]
        runs += [
            (
                f"+ {k} training neighbours",
                plain.with_training_neighbours(train.features, train.truth, k=k),
            )
            for k in ks
        ]
        for label, geo in runs:
            rows = evaluate_model(geo, queries.features, queries.truth, modes=("top1", "median"))
            for row in rows:
                acc = [100 * float(np.mean(row.dist_km <= t)) for t in THRESHOLDS]
                lines.append(
                    f"| {name} | {label} | {row.mode} | "
                    + " | ".join(f"{a:.1f}" for a in acc)
                    + f" | {float(np.median(row.dist_km)):,.0f} |"
                )
            print(lines[-1], file=sys.stderr)
    write_section("Retrieval-augmented candidates vs gallery retrieval", "\n".join(lines))


if __name__ == "__main__":
    main()
