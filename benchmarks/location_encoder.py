"""Location encoder throughput on the official 100K gallery: ours vs the geoclip package.

    .venv/bin/python benchmarks/location_encoder.py [--quick]

Writes the "Location encoder" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import best_time, write_section  # noqa: E402

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20K points, 1 repeat")
    args = parser.parse_args()

    from geoclip import LocationEncoder as ReferenceEncoder

    from geoalign.data.galleries import load_gallery
    from geoalign.models.registry import load_location_encoder

    gallery = load_gallery("geoclip-100k")
    coords = torch.tensor(gallery[["lat", "lon"]].to_numpy(), dtype=torch.float32)
    if args.quick:
        coords = coords[:20_000]
    n = len(coords)
    repeats = 1 if args.quick else 2

    ref = ReferenceEncoder().eval()  # as shipped: subnormal weights included
    ours = load_location_encoder("geoclip")
    ours_bf16 = load_location_encoder("geoclip", dtype=torch.bfloat16)

    rows = []
    with torch.inference_mode():
        # The reference's own predict() encodes the whole gallery in one call.
        t_ref = best_time(lambda: ref(coords), repeats=repeats)
        rows.append(("geoclip package, one call (as GeoCLIP.predict)", t_ref))
        t_ref_chunk = best_time(lambda: [ref(c) for c in coords.split(4096)], repeats=repeats)
        rows.append(("geoclip package, 4096-point chunks", t_ref_chunk))
        for bs in (1024, 4096):
            t = best_time(lambda bs=bs: ours.encode(coords, batch_size=bs), repeats=repeats)
            rows.append((f"geoalign fp32, chunks of {bs}", t))
        # bf16 has no native support on AVX2 CPUs (~10× slower): timed on 10K points, scaled.
        sub = coords[:10_000]
        t = best_time(lambda: ours_bf16.encode(sub, batch_size=4096), repeats=1, warmup=0)
        rows.append(("geoalign bf16 (MLP in bf16), 10K points scaled", t * n / len(sub)))
        diff = (ours.encode(coords[:10_000]) - ref(coords[:10_000])).abs().max().item()
        a, w = torch.randn(4096, 1024), torch.randn(1024, 1024)
        gemm_peak = 2 * 4096 * 1024 * 1024 / best_time(lambda: a @ w, repeats=20, warmup=3) / 1e9

    gflop = 3 * 2 * (512 * 1024 + 2 * 1024 * 1024 + 1024 * 512) / 1e9  # per coordinate
    lines = [
        f"{n:,} coordinates of the official gallery; best of {repeats}. "
        f"Max |ours − reference| on 10K points: {diff:.2e}.",
        "",
        "| implementation | coords/s | × reference (one call) | GFLOP/s |",
        "|---|---:|---:|---:|",
    ]
    for name, t in rows:
        lines.append(f"| {name} | {n / t:,.0f} | {t_ref / t:.2f} | {n * gflop / t:,.0f} |")
    lines += [
        "",
        f"The encoder is {gflop * 1e3:.1f} MFLOP per coordinate of dense fp32 GEMM; this CPU's "
        "fp32 GEMM peak "
        f"(4096×1024 @ 1024×1024) measured {gemm_peak:,.0f} GFLOP/s in the same run, which bounds "
        "any fp32 implementation. On the gallery path geoalign computes these embeddings "
        "once per (model, gallery) and reads them from its cache afterwards (see the predict "
        "benchmark).",
    ]
    write_section("Location encoder (100K gallery)", "\n".join(lines))


if __name__ == "__main__":
    main()
