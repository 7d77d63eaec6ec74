"""Benchmark: probabilistic outputs over the official 100K gallery (issue 13 targets).

Per query: the distribution (softmax over the gallery, smoothing on S2 cells), the 50% and 90%
regions (with country shares), the median and mean estimates, and the density at a point; for
one query at a time and per query in a batch of 64. Also the size of one GeoJSON (estimate +
50/90% region outlines). Queries are the official image head applied to random features (scale
0.5, as the conformance tests), so the timings cover the real gallery and head. The median alone
is also timed with the previous solver (`geometric_median_lbfgs`) on the same queries, in the
same run, with the largest distance between the two answers; and the machine's load average.

    python benchmarks/distribution.py [--queries 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geoalign.geo.distance import haversine_km

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

REGIONS = (0.5, 0.9)
TARGET_ONE_MS, TARGET_BATCH_MS, TARGET_GEOJSON_KB = 20, 5, 100  # issue 13's targets


def _one_query_work(geo, q: torch.Tensor, point: np.ndarray) -> None:
    (dist,) = geo.distributions(q)
    for p in REGIONS:
        dist.region(p)
    dist.estimate("median")
    dist.estimate("mean")
    dist.density(point)


def _median_solvers(dists: list) -> tuple[float, float, float]:
    """Median per query (ms): the batched solver one query at a time, the reference solver, on
    the library's support; and the largest distance (km) between their answers."""
    from geoalign.geo.distance import EARTH_RADIUS_KM
    from geoalign.inference.distribution import median_problem
    from geoalign.inference.median import angles, geometric_median, geometric_median_lbfgs

    new, ref, gap = [], [], 0.0
    for d in dists:
        xyz, w = (a[0] for a in median_problem(d.grid, d.probs[None]))
        t = time.perf_counter()
        a = geometric_median(xyz, w)
        new.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = geometric_median_lbfgs(xyz, w)
        ref.append(time.perf_counter() - t)
        gap = max(gap, float(angles(a[None], b)[0]) * EARTH_RADIUS_KM)
    return 1000 * float(np.median(new)), 1000 * float(np.median(ref)), gap


def _whole_support(dists: list) -> tuple[float, float]:
    """The library's median against the median of every candidate (100K points, solved
    directly): the largest excess of its expected distance (km) and largest distance apart."""
    from geoalign.inference.distribution import to_latlon
    from geoalign.inference.median import geometric_median

    excess, apart = 0.0, 0.0
    for d in dists:
        ours = d.estimate("median")
        whole = to_latlon(geometric_median(d.grid.xyz, d.probs))
        excess = max(excess, d.expected_distance_km(ours) - d.expected_distance_km(whole))
        apart = max(apart, haversine_km(*ours, *whole))
    return excess, apart


def _layouts(keys: torch.Tensor, queries: torch.Tensor) -> tuple[float, ...]:
    """Scores of one query and of the batch against the gallery keys as the library keeps them
    (`models.base.feature_major`) and row by row: ms per query, median of 16 / best of 3."""
    from geoalign.models.base import is_feature_major

    assert is_feature_major(keys)
    rows = keys.contiguous()
    out = []
    for k in (keys, rows):
        one = []
        for i in range(16):
            t = time.perf_counter()
            queries[i % len(queries)][None] @ k.T
            one.append(time.perf_counter() - t)
        out.append(1000 * float(np.median(one)))
    for k in (keys, rows):
        batch = []
        for _ in range(3):
            t = time.perf_counter()
            queries @ k.T
            batch.append((time.perf_counter() - t) / len(queries))
        out.append(1000 * min(batch))
    del rows
    return tuple(out)  # one query: feature-major, rows; batch: feature-major, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model

    geo = Geolocator(load_model("geoclip"), gallery=load_gallery("geoclip-100k"))
    torch.manual_seed(0)
    feats = torch.randn(args.queries, 768) * 0.5
    queries = geo.embed_features(feats)
    point = np.array([[48.85, 2.35]])
    _one_query_work(geo, queries[:1], point)  # warm: cell grid, mode seeker, country polygons

    single = []
    for i in range(min(args.queries, 16)):
        t = time.perf_counter()
        _one_query_work(geo, queries[i : i + 1], point)
        single.append(time.perf_counter() - t)
    batch_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        dists = geo.distributions(queries)
        for d in dists:
            for p in REGIONS:
                d.region(p)
            d.estimate("median")
            d.estimate("mean")
            d.density(point)
        batch_times.append((time.perf_counter() - t) / len(queries))
    sizes = [len(json.dumps(d.to_geojson())) for d in geo.distributions(queries[:16])]
    areas = [d.region(0.9, countries=False).area_km2 for d in geo.distributions(queries[:16])]
    one_ms, batch_ms = 1000 * float(np.median(single)), 1000 * min(batch_times)
    new_ms, ref_ms, gap_km = _median_solvers(geo.distributions(queries[:16]))
    probs_one, probs_batch = [], []
    for i in range(len(single)):  # the softmax over the gallery alone (logits: a 100K x D GEMV)
        t = time.perf_counter()
        geo.probs(queries[i : i + 1])
        probs_one.append(time.perf_counter() - t)
    for _ in range(args.repeats):
        t = time.perf_counter()
        geo.probs(queries)
        probs_batch.append((time.perf_counter() - t) / len(queries))
    probs_one_ms, probs_batch_ms = 1000 * float(np.median(probs_one)), 1000 * min(probs_batch)
    layout = _layouts(geo.candidates.keys, queries)
    excess_km, apart_km = _whole_support(geo.distributions(queries[:8]))
    load = os.getloadavg()[0]
    lo, hi = (f"{round(100 * p)} percent" for p in REGIONS)
    body = f"""
Official GeoCLIP head and location encoder, 100K gallery; per query: distribution, the {lo} and
{hi} regions with country shares, median and mean estimates, density at a point.

| measure | value | target |
|---|---:|---:|
| one query at a time (median of {len(single)}) | {one_ms:.1f} ms | ≤ {TARGET_ONE_MS} ms |
| per query in a batch of {len(queries)} (best of {args.repeats}) | {batch_ms:.1f} ms \
| ≤ {TARGET_BATCH_MS} ms |
| GeoJSON of estimate + {lo}/{hi} regions (largest of 16) | {max(sizes) / 1024:.1f} KB \
| ≤ {TARGET_GEOJSON_KB} KB |
| median area of the {hi} region (random features) | {np.median(areas) / 1e6:.2f} M km² | |
| of which the softmax over the gallery: one query / per query in the batch \
| {probs_one_ms:.1f} / {probs_batch_ms:.1f} ms | |
| median alone, one query: batched Newton solver (median of 16) | {new_ms:.1f} ms | |
| median alone, one query: previous Weiszfeld + L-BFGS solver, same queries | {ref_ms:.1f} ms | |
| largest distance between the two solvers' medians (16 queries) | {gap_km * 1000:.0f} m | |
| median against the median of all 100K candidates (8 queries): largest excess expected \
distance / largest distance apart | {excess_km * 1000:.0f} m / {apart_km:.1f} km | |
| gallery scores (no softmax), one query: feature-major keys / row-major keys \
| {layout[0]:.1f} / {layout[1]:.1f} ms | |
| gallery scores, per query in the batch: feature-major / row-major \
| {layout[2]:.2f} / {layout[3]:.2f} ms | |

Load average (1 min) when the run ended: {load:.2f} on {os.cpu_count()} cores (other jobs share
the machine, so timings vary between runs; the two solvers were timed in the same run).

Command: `python benchmarks/distribution.py --queries {args.queries} --repeats {args.repeats}`.
"""
    write_section("Probabilistic outputs: distribution, regions, estimates (100K gallery)", body)


if __name__ == "__main__":
    main()
