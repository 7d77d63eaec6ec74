"""Benchmark: S2 partition hierarchy at MP-16 scale (4.7M coordinates, 7 levels).

We lack the MP-16 coordinates, so the sample is synthetic: every cell of the published tau_max=1000
partition (cells_50_1000) receives its published image count, uniformly inside the cell. Reports:
  - time to compute leaf cell ids (ours vs. s2geometry one point at a time, extrapolated),
  - time to build the 7-level GeoSURGE hierarchy (tau_min 50; tau_max 25000 ... 500),
  - time to assign all coordinates to all 7 levels (requirement: <= 120 s),
  - cell counts of our builder vs. the published partitions at tau_max 5000 / 2000 / 1000.

    python benchmarks/cells.py [--data ../shared/data] [--scale 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

from geoalign.geo.cells import (
    DEFAULT_TAU_MAX,
    CellHierarchy,
    PartitionRules,
    latlon_to_cell_ids,
    read_cell_csvs,
    sample_in_cells,
)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _s2geometry_rate(lat: np.ndarray, lon: np.ndarray, n: int = 100_000) -> float:
    """Points per second for s2geometry's per-point API (leaf id + 7 parents)."""
    import s2geometry as s2

    start = time.perf_counter()
    for a, b in zip(lat[:n].tolist(), lon[:n].tolist(), strict=True):
        cell = s2.S2CellId(s2.S2LatLng.FromDegrees(a, b))
        for level in (4, 6, 8, 10, 12, 14, 16):
            cell.parent(level)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of MP-16's size to sample"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text)
        lines.append(text)

    files = [args.data / f"cells_50_{t}_copy.csv" for t in (5000, 2000, 1000)]
    (published, repairs), t_read = _timed(read_cell_csvs, files)
    fine = published.partitions[-1]
    rng = np.random.default_rng(args.seed)
    counts = fine.counts if args.scale == 1.0 else rng.binomial(fine.counts, args.scale)
    (lat, lon), t_sample = _timed(sample_in_cells, fine.cell_ids, counts, rng)
    n = lat.size
    say(
        f"published partitions read in {t_read:.1f}s; repaired tokens: "
        + ", ".join(
            f"{k}: {sum(r.token is not None for r in v)}/{len(v)}" for k, v in repairs.items()
        )
    )
    say(f"synthetic sample: {n:,} points ({t_sample:.1f}s)")

    _, t_ids = _timed(latlon_to_cell_ids, lat, lon)
    rate = _s2geometry_rate(lat, lon)
    say(
        f"leaf cell ids: {t_ids:.2f}s ({n / t_ids / 1e6:.1f}M points/s); s2geometry per point "
        f"(leaf + 7 parents): {rate:,.0f} points/s -> {n / rate:.0f}s for this sample"
    )

    taus = tuple(int(x * args.scale) for x in DEFAULT_TAU_MAX)
    tau_min = max(1, int(50 * args.scale))
    results: dict = {"n_points": int(n), "ids_s": t_ids, "s2geometry_points_per_s": rate}
    for name, rules in (
        ("paper", PartitionRules(tau_min=tau_min)),
        ("geoestimation", PartitionRules.geoestimation(tau_min)),
    ):
        hierarchy, t_build = _timed(CellHierarchy.build, lat, lon, taus, rules)
        labels, t_assign = _timed(hierarchy.assign, lat, lon)
        nested = all(r.nested for r in hierarchy.nesting())
        say(
            f"[{name} rules] build 7 levels: {t_build:.1f}s; assign {n:,} points to 7 levels: "
            f"{t_assign:.1f}s (limit 120s); nested: {nested}"
        )
        say(
            "  cells per level: "
            + ", ".join(f"{p.tau_max}: {len(p)}" for p in hierarchy.partitions)
        )
        say("  unassigned per level: " + str((labels < 0).sum(axis=0).tolist()))
        compare = {}
        for theirs in published.partitions:
            tau = int(theirs.tau_max * args.scale)
            ours = next(p for p in hierarchy.partitions if p.tau_max == tau)
            same = int(np.isin(ours.cell_ids, theirs.cell_ids).sum())
            compare[theirs.tau_max] = {
                "ours": len(ours),
                "theirs": len(theirs),
                "identical_cells": same,
            }
            say(
                f"  tau_max {theirs.tau_max}: ours {len(ours)} vs published {len(theirs)} "
                f"({same} identical cells)"
            )
        results[name] = {
            "build_s": t_build,
            "assign_s": t_assign,
            "nested": nested,
            "cells": {p.tau_max: len(p) for p in hierarchy.partitions},
            "vs_published": compare,
        }
    write_section(
        "GeoSURGE: S2 cell hierarchy at MP-16 scale",
        "Synthetic MP-16-sized sample (each published tau_max=1000 cell gets its published count, "
        "uniform inside the cell).\n\n```\n" + "\n".join(lines) + "\n```",
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
