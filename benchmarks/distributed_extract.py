"""Distributed feature extraction speed-up: 2 processes vs 1 on a decode-bound backbone.

    .venv/bin/python benchmarks/distributed_extract.py [--photos 256] [--rounds 2]

The photos of benchmarks/shard_read.py (1024 x 768 JPEGs in webdataset shards) are extracted
with the decode-bound thumbnail encoder by one process, then by two (RANK/WORLD_SIZE set, as
torchrun does) followed by the merge; both are timed from process launch to a complete store,
each process with one thread. Rounds alternate; the best of each is reported. Target (issue
16): >= 1.7x with 2 processes -- which needs 2 free cores. Writes the "Scale: distributed
extraction" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from shard_read import make_data  # noqa: E402

_RANK = """
import sys, warnings
sys.path.insert(0, {here!r})
warnings.filterwarnings("ignore")
from shard_read import thumbnail
from geoalign.data.feature_store import dist_env, extract_features
from geoalign.data.wds import expand_shards, list_shards
rank, world = dist_env()
first = rank * len(expand_shards(sys.argv[1])) // world  # ranks share the listing work
extract_features(list_shards(sys.argv[1], cache_dir=sys.argv[2] + "/.wds-listing",
                             start=first), thumbnail, sys.argv[2],
                 batch_size=32, shard_size=32, progress=False, rank=rank, world_size=world)
"""


def run(shards: Path, out: Path, world: int) -> float:
    """Wall time for `world` concurrent ranks (+ the merge) to produce the store at `out`."""
    from geoalign.data.feature_store import merge_parts

    script = _RANK.format(here=str(Path(__file__).parent))
    start = time.perf_counter()
    procs = []
    for rank in range(world):
        env = os.environ | {"RANK": str(rank), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen([sys.executable, "-c", script, str(shards), str(out)], env=env)
        )
    if any(p.wait() for p in procs):
        raise SystemExit("a rank failed")
    if world > 1:
        merge_parts(out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    t1, t2 = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, shards = make_data(tmp, args.photos, shard_size=32)
        for r in range(args.rounds):
            t1.append(run(shards, tmp / f"one-{r}", 1))
            t2.append(run(shards, tmp / f"two-{r}", 2))
            print(f"1 process {t1[-1]:.2f} s, 2 processes {t2[-1]:.2f} s", flush=True)
    n, b1, b2 = args.photos, min(t1), min(t2)
    body = (
        f"{n} JPEG photos of 1024 x 768 in {-(-n // 32)} webdataset shards, decode-bound "
        f"extraction (2 x 2 thumbnail), one thread per process, launch to complete store "
        f"(merge included), best of {args.rounds} alternating rounds; {os.cpu_count()} cores "
        "shared with other work. Target: >= 1.7x.\n\n"
        "| processes | s | photos / s | speed-up |\n|---:|---:|---:|---:|\n"
        f"| 1 | {b1:.2f} | {n / b1:.1f} | 1.00x |\n"
        f"| 2 | {b2:.2f} | {n / b2:.1f} | {b1 / b2:.2f}x |"
    )
    write_section("Scale: distributed extraction", body)


if __name__ == "__main__":
    main()
