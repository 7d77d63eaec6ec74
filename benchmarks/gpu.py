"""The GPU path, one command: ViT-L/14 features end to end from webdataset shards, and GeoCLIP
training from features.

    .venv/bin/python benchmarks/gpu.py [--photos 2048] [--batch-size 256] [--workers 8]
                                       [--decode cpu|gpu] [--steps 30]

Batch predict: `Geolocator.predict` over the same shards (decode workers and pinned batches, or
nvJPEG with `--decode gpu`; bf16 tower, official head and 100K gallery), photos/s.
Features: `--photos` 1024 x 768 JPEGs written as webdataset shards, then `features extract`'s
code path (shard listing, decode threads or nvJPEG, tensor transform, pinned copies, bf16
autocast, SDPA attention) with a CLIP ViT-L/14 vision tower built from its config (random
weights: the cost is that of the real ones), timed from the first shard read to the last store
shard written. Training: benchmarks/train.py's geoalign run ("published": batch 512, GPS queue
4096 re-encoded with gradients), which Lightning places on the GPU; samples/s from the median
step. GeoSURGE: one fusion training step (CLIP ViT-L/14-336 with its last block trainable, 3
fusion blocks, the paper's 7 geocell levels on a synthetic 20K-cell hierarchy, bf16 autocast)
over 1,024 samples as micro-batches, seconds per 1,024. Without CUDA it says so and exits 0
without measuring anything; `--dry-run` runs every part with tiny models on the CPU (a check
that the script works, nothing written). Writes the "GPU: features and training" section of
benchmarks/RESULTS.md.
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


def write_photo_shards(tmp: Path, photos: int) -> Path:
    """`photos` 1024 x 768 JPEGs (64 distinct) as webdataset shards of 512 in tmp/wds."""
    from predict import _photo

    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import write_shards

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
    return tmp / "wds"


def features_per_second(tmp: Path, photos: int, batch: int, workers: int, decode: str) -> float:
    from predict import VIT_L14
    from transformers import CLIPVisionConfig

    from geoalign.data.feature_store import encode_with, extract_features
    from geoalign.data.wds import ShardImageLoader, list_shards
    from geoalign.nn.backbones import ClipBackbone

    write_photo_shards(tmp, photos)
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


def predict_per_second(
    shards: Path,
    photos: int,
    batch: int,
    workers: int,
    device: str,
    tiny: bool = False,
    decode: str = "cpu",
) -> float:
    """Batch predict from the shards: `Geolocator.predict` (decode workers, pinned batches,
    the official head and 100K gallery; ViT-L/14 in bf16 with random weights), photos/s."""
    from predict import VIT_L14
    from transformers import CLIPVisionConfig

    from geoalign.data.galleries import load_gallery
    from geoalign.data.wds_images import list_photos
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model
    from geoalign.nn.backbones import ClipBackbone

    vit = dict(VIT_L14)
    if tiny:  # (same 768-d projection: the official head reads it)
        vit.update(num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=4)
    backbone = ClipBackbone.from_config(CLIPVisionConfig(**vit)).to(device)
    if device == "cuda":
        backbone.configure_inference(precision="bf16")
    model = load_model("geoclip", device=device)
    geo = Geolocator(model, backbone=backbone, gallery=load_gallery("geoclip-100k"))
    run = dict(top_k=5, batch_size=batch, num_workers=workers, places=False, decode=decode)
    geo.predict(list_photos(shards), **run)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = geo.predict(list_photos(shards), **run)
    if device == "cuda":
        torch.cuda.synchronize()
    assert len(out) == photos
    return photos / (time.perf_counter() - start)


def training_samples_per_second(tmp: Path, steps: int) -> float:
    from train import BATCH, geoalign_step_times, training_data

    feats, coords = training_data(BATCH * steps)
    times = geoalign_step_times(feats, coords, steps, "published", tmp / "train")
    return BATCH / statistics.median(times[len(times) // 3 :])


def geosurge_fusion_seconds(size: str, device: str, micro: int, samples: int) -> float:
    """Seconds for one GeoSURGE fusion training step over `samples` samples (forward, backward
    and AdamW, in micro-batches of `micro` under bf16 autocast on CUDA): median of 3 after one
    warm-up."""
    from geosurge import build_model

    from geoalign.geo.cells import CellHierarchy, PartitionRules

    rng = np.random.default_rng(0)  # ~20K finest cells, as benchmarks/geosurge.py
    n = 4_000_000 if size == "large" else 20_000
    lat = np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, n)))
    hierarchy = CellHierarchy.build(
        lat, rng.uniform(-180, 180, n), rules=PartitionRules(tau_min=50)
    )
    model = build_model(hierarchy, size, "fusion").to(device)
    s = model.backbone.image_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randint(0, k, (micro,), generator=g) for k in hierarchy.sizes], 1)
    inputs = {
        "pixels": torch.randn(micro, 3, s, s).to(device),
        "seg": torch.randint(0, 150, (micro, s, s)).to(device),
    }
    labels = labels.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for _ in range(max(1, samples // micro)):
            with autocast:
                loss = model.loss(model.encode(inputs), labels).total
            loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def dry_run() -> None:
    """Every part with tiny models on the CPU: the script works; nothing is measured."""
    from predict import _photo

    with tempfile.TemporaryDirectory() as tmp:
        _photo(Path(tmp) / "p.jpg", 0)
        shards = write_photo_shards(Path(tmp), 8)
        predict_s = predict_per_second(shards, 8, 4, 0, "cpu", tiny=True)
        t = geosurge_fusion_seconds("tiny", "cpu", micro=4, samples=8)
        samples_s = training_samples_per_second(Path(tmp), steps=2)
    print(
        f"dry run ok: batch predict {predict_s:.1f} photos/s, GeoSURGE tiny fusion step "
        f"{t:.2f} s, GeoCLIP step {samples_s:,.0f} samples/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--geosurge-micro", type=int, default=64, help="micro-batch of the 1,024")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU; no output")
    args = parser.parse_args()
    if args.dry_run:
        dry_run()
        return
    if not torch.cuda.is_available():
        print("gpu.py skipped: no CUDA device is visible here; nothing was measured.")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images_s = features_per_second(tmp, args.photos, args.batch_size, args.workers, args.decode)
        print(f"ViT-L/14 features from shards: {images_s:,.0f} images/s", flush=True)
        predict_s = predict_per_second(
            tmp / "wds", args.photos, args.batch_size, args.workers, "cuda", decode=args.decode
        )
        print(f"Batch predict from shards: {predict_s:,.0f} photos/s", flush=True)
        samples_s = training_samples_per_second(tmp, args.steps)
        print(f"GeoCLIP training step: {samples_s:,.0f} samples/s", flush=True)
        fusion_s = geosurge_fusion_seconds("large", "cuda", args.geosurge_micro, 1024)
        print(f"GeoSURGE fusion step: {fusion_s:.2f} s per 1,024 samples", flush=True)
    name = torch.cuda.get_device_name(0)
    body = (
        f"{name}. Targets (issue 16): >= 2,000 images/s, >= 50,000 samples/s.\n\n"
        "| what | rate |\n|---|---:|\n"
        f"| CLIP ViT-L/14 features, bf16 + SDPA, end to end from webdataset shards of "
        f"{args.photos} 1024 x 768 JPEGs (batch {args.batch_size}, {args.workers} decode threads, "
        f"decode on {args.decode}) | {images_s:,.0f} images/s |\n"
        f"| `Geolocator.predict` from the same shards (ViT-L/14 bf16, official head, 100K "
        f"gallery, top-5, batch {args.batch_size}, {args.workers} workers, decode on "
        f"{args.decode}) | {predict_s:,.0f} photos/s |\n"
        f"| GeoCLIP training step from features (batch 512, queue 4096 with gradients) | "
        f"{samples_s:,.0f} samples/s |\n"
        f"| GeoSURGE fusion training step, ViT-L/14-336 (last block trainable) + 3 fusion blocks, "
        f"7 levels, 1,024 samples in micro-batches of {args.geosurge_micro}, bf16 | "
        f"{fusion_s:.2f} s per 1,024 samples |"
    )
    write_section("GPU: features and training", body)


if __name__ == "__main__":
    main()
