"""The GPU path, one command: ViT-L/14 features end to end from webdataset shards, and GeoCLIP
training from features.

    .venv/bin/python benchmarks/gpu.py [--photos 2048] [--batch-size 256] [--workers 8]
                                       [--decode cpu|gpu] [--steps 30]

Features: `--photos` 1024 x 768 JPEGs written as webdataset shards, then `features extract`'s
code path (shard listing, decode threads or nvJPEG, tensor transform, pinned copies, bf16
autocast, SDPA attention) with a CLIP ViT-L/14 vision tower built from its config (random
weights: the cost is that of the real ones), timed from the first shard read to the last store
shard written. Training: benchmarks/train.py's geoalign run ("published": batch 512, GPS queue
4096 re-encoded with gradients), which Lightning places on the GPU; samples/s from the median
step. Without CUDA it says so and exits 0 without measuring anything. Writes the "GPU: features
and training" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

warnings.filterwarnings("ignore")


def features_per_second(tmp: Path, photos: int, batch: int, workers: int, decode: str) -> float:
    from predict import VIT_L14, _photo
    from transformers import CLIPVisionConfig

    from geoalign.data.feature_store import encode_with, extract_features
    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import ShardImageLoader, list_shards, write_shards
    from geoalign.nn.backbones import ClipBackbone

    distinct = [_photo(tmp / f"p{i}.jpg", i) for i in range(min(photos, 64))]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "image": [str(distinct[i % len(distinct)]) for i in range(photos)],
            "lat": rng.uniform(-60, 60, photos),
            "lon": rng.uniform(-180, 180, photos),
        }
    )
    frame.to_csv(tmp / "photos.csv", index=False)
    manifest = load_manifest(tmp / "photos.csv", check_files=True).clean()
    write_shards(manifest, tmp / "wds", shard_size=512)
    model = ClipBackbone.from_config(CLIPVisionConfig(**VIT_L14)).cuda()
    model.configure_inference(precision="bf16")
    encode = encode_with(model)
    warm = torch.zeros(3, 224, 224, dtype=torch.uint8)
    for _ in range(3):
        encode([warm] * batch)
    torch.cuda.synchronize()
    loader = ShardImageLoader(decode_device="cuda" if decode == "gpu" else None)
    start = time.perf_counter()
    listing = list_shards(tmp / "wds")
    extract_features(
        listing,
        encode,
        tmp / "store",
        load_fn=loader,
        batch_size=batch,
        shard_size=4096,
        num_workers=workers,
        progress=False,
    )
    torch.cuda.synchronize()
    return photos / (time.perf_counter() - start)


def training_samples_per_second(tmp: Path, steps: int) -> float:
    from train import BATCH, geoalign_step_times, training_data

    feats, coords = training_data(BATCH * steps)
    times = geoalign_step_times(feats, coords, steps, "published", tmp / "train")
    return BATCH / statistics.median(times[len(times) // 3 :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu.py skipped: no CUDA device is visible here; nothing was measured.")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images_s = features_per_second(tmp, args.photos, args.batch_size, args.workers, args.decode)
        print(f"ViT-L/14 features from shards: {images_s:,.0f} images/s", flush=True)
        samples_s = training_samples_per_second(tmp, args.steps)
        print(f"GeoCLIP training step: {samples_s:,.0f} samples/s", flush=True)
    name = torch.cuda.get_device_name(0)
    body = (
        f"{name}. Targets (issue 16): >= 2,000 images/s, >= 50,000 samples/s.\n\n"
        "| what | rate |\n|---|---:|\n"
        f"| CLIP ViT-L/14 features, bf16 + SDPA, end to end from webdataset shards of "
        f"{args.photos} 1024 x 768 JPEGs (batch {args.batch_size}, {args.workers} decode threads, "
        f"decode on {args.decode}) | {images_s:,.0f} images/s |\n"
        f"| GeoCLIP training step from features (batch 512, queue 4096 with gradients) | "
        f"{samples_s:,.0f} samples/s |"
    )
    write_section("GPU: features and training", body)


if __name__ == "__main__":
    main()
