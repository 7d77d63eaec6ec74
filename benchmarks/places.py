"""Benchmark: offline place names (issue 15's target: <= 50 ms per point, batched; index built
once). Times the first lookup of a fresh process (loading GeoNames cities1000 and the Natural
Earth countries, building the index) and then batched lookups of land points and of points
anywhere on the sphere (at sea included), per point.

    python benchmarks/places.py [--points 5000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

TARGET_MS = 50.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from geoalign.geo.places import PlaceFinder

    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, args.points)  # uniform on the sphere: mostly sea
    anywhere = np.column_stack([np.degrees(np.arcsin(z)), rng.uniform(-180, 180, args.points)])
    finder = PlaceFinder()
    start = time.perf_counter()
    finder.nearest(anywhere[:1])
    first = time.perf_counter() - start
    cities = np.column_stack([finder.lat, finder.lon])  # GeoNames towns: land points near them
    land = cities[rng.choice(len(cities), args.points)] + rng.normal(0, 0.05, (args.points, 2))
    land[:, 0] = land[:, 0].clip(-90, 90)
    rows = []
    for name, points in (("near towns (land)", land), ("uniform on the sphere", anywhere)):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            places = finder.nearest(points)
            times.append(time.perf_counter() - t)
        at_sea = sum(p.at_sea for p in places) / len(places)
        per_point = 1000 * statistics.median(times) / len(points)
        rows.append(f"| {name} | {len(points):,} | {per_point:.3f} ms | {100 * at_sea:.0f} |")
    body = "\n".join(
        [
            f"First lookup of a fresh process (data read, index built once): {first:.2f} s.",
            "",
            "| points | batch | per point (median of repeats) | share at sea (percent) |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"Target: at most {TARGET_MS:g} ms per point, batched.",
            "",
            f"Command: `python benchmarks/places.py --points {args.points}`.",
        ]
    )
    write_section("Places: offline place names", body)


if __name__ == "__main__":
    main()
