"""Reading webdataset shards vs reading the same images as files, through `features extract`.

    .venv/bin/python benchmarks/shard_read.py [--photos 256] [--rounds 3]

The same 1024 x 768 JPEGs are read once from loose files (a manifest) and once from webdataset
shards (`data to-wds`), through extract_features with a decode-bound encoder (a 2 x 2
thumbnail: decoding is all the work), so any cost of the shard path -- the listing pass, tar
streaming, the loader -- shows in full. The rounds alternate files and shards so that a busy
machine slows both alike; the best round of each is reported. Target (issue 16): shards add at
most 10%. Writes the "Scale: shard reads vs files" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_OVERHEAD = 0.10  # issue 16: reading shards adds at most this over reading files

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

warnings.filterwarnings("ignore")


def thumbnail(images: list) -> np.ndarray:
    """A decode-bound 'backbone': 12 numbers per image, next to nothing after the decode."""
    return np.stack(
        [np.asarray(im.resize((2, 2)), dtype=np.float32).reshape(-1) / 255 for im in images]
    )


def make_data(tmp: Path, photos: int, shard_size: int = 64) -> tuple[Path, Path]:
    """`photos` JPEG files (64 distinct contents) + manifest, and the same as shards."""
    from predict import _photo

    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import write_shards

    folder = tmp / "photos"
    folder.mkdir()
    distinct = [_photo(folder / f"d{i}.jpg", i) for i in range(min(64, photos))]
    names = []
    for i in range(photos):
        path = folder / f"p{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(distinct[i % len(distinct)].read_bytes())
        names.append(path.name)
    rng = np.random.default_rng(0)
    csv = folder / "photos.csv"
    frame = pd.DataFrame(
        {"image": names, "lat": rng.uniform(-60, 60, photos), "lon": rng.uniform(-170, 170, photos)}
    )
    frame.to_csv(csv, index=False)
    write_shards(load_manifest(csv, check_files=True).clean(), tmp / "wds", shard_size=shard_size)
    return csv, tmp / "wds"


def time_files(csv: Path, out: Path) -> float:
    from geoalign.data.feature_store import extract_features
    from geoalign.data.manifest import load_manifest

    start = time.perf_counter()
    manifest = load_manifest(csv, check_files=True).clean()
    extract_features(manifest, thumbnail, out, batch_size=32, progress=False, overwrite=True)
    return time.perf_counter() - start


def time_shards(shards: Path, out: Path) -> float:
    from geoalign.data.feature_store import extract_features
    from geoalign.data.wds import list_shards

    start = time.perf_counter()
    extract_features(
        list_shards(shards), thumbnail, out, batch_size=32, progress=False, overwrite=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv, shards = make_data(tmp, args.photos)
        size_mb = sum(p.stat().st_size for p in shards.glob("*.tar")) / args.photos / 1e6
        t_files, t_shards = [], []
        for _ in range(args.rounds):
            t_files.append(time_files(csv, tmp / "f"))
            t_shards.append(time_shards(shards, tmp / "s"))
            print(f"files {t_files[-1]:.2f} s, shards {t_shards[-1]:.2f} s", flush=True)
    best_f, best_s = min(t_files), min(t_shards)
    n = args.photos
    body = (
        f"{n} JPEG photos of 1024 x 768 ({size_mb:.2f} MB each: random pixels, quality 90), "
        f"decode-bound extraction (2 x 2 thumbnail), batch 32, "
        f"best of {args.rounds} alternating rounds. Target: shards add at most {round(100 * TARGET_OVERHEAD)} percent.\n\n"
        "| source | s | photos / s |\n|---|---:|---:|\n"
        f"| loose files (manifest) | {best_f:.2f} | {n / best_f:.1f} |\n"
        f"| webdataset shards (listing pass included) | {best_s:.2f} | {n / best_s:.1f} |\n\n"
        f"Shard overhead: {100 * (best_s / best_f - 1):+.1f}%."
    )
    write_section("Scale: shard reads vs files", body)


if __name__ == "__main__":
    main()
