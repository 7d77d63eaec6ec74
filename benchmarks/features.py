"""Feature extraction throughput: `geoalign features extract` vs the geoclip package's image path.

    .venv/bin/python benchmarks/features.py [--photos 64]

Both run the same CLIP ViT-L/14 vision tower built from its config (random weights: the cost is
that of the real ones). The reference encodes one photo at a time the way its `predict` does
(PIL open, `CLIPImageProcessor`, `CLIPModel.get_image_features`); geoalign writes a sharded,
resumable float16 store with batched forwards (decoding in the main thread, the CLI default: on 2 cores decode threads only take CPU from the forward pass). Writes the "Feature
extraction" section of benchmarks/RESULTS.md.
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
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import peak_rss_mb, write_section  # noqa: E402
from predict import VIT_L14, _photo  # noqa: E402

warnings.filterwarnings("ignore")


def ours(manifest_csv: Path, out: Path, batch_size: int) -> float:
    from transformers import CLIPVisionConfig

    from geoalign.data.feature_store import encode_with, extract_features
    from geoalign.data.manifest import load_manifest
    from geoalign.nn.backbones import ClipBackbone

    backbone = ClipBackbone.from_config(CLIPVisionConfig(**VIT_L14))
    table = load_manifest(manifest_csv, check_files=True).clean()
    encode = encode_with(backbone)
    encode([backbone.transform(_warm_image())])  # warm-up outside the timing, as for the reference
    start = time.perf_counter()
    extract_features(
        table, encode, out, batch_size=batch_size, num_workers=0, progress=False, dtype="float16"
    )
    return time.perf_counter() - start


def _warm_image():
    from PIL import Image

    return Image.new("RGB", (640, 480), (120, 90, 60))


def reference(paths: list[str]) -> float:
    from geoclip.model.image_encoder import ImageEncoder, _extract_image_features
    from PIL import Image

    encoder = ImageEncoder(from_pretrained=False).eval()  # its CLIP config: ViT-L/14 vision tower
    with torch.inference_mode():
        encoder.CLIP.get_image_features(pixel_values=encoder.preprocess_image(_warm_image()))
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                pixels = encoder.preprocess_image(image.convert("RGB"))
            _extract_image_features(encoder.CLIP.get_image_features(pixel_values=pixels))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [str(_photo(tmp / f"p{i}.jpg", i)) for i in range(args.photos)]
        rng = np.random.default_rng(0)
        manifest = tmp / "photos.csv"
        pd.DataFrame(
            {
                "image": paths,
                "lat": rng.uniform(-60, 60, len(paths)),
                "lon": rng.uniform(-180, 180, len(paths)),
            }
        ).to_csv(manifest, index=False)
        t_ours = ours(manifest, tmp / "store", args.batch_size)
        rss_ours = peak_rss_mb()
        t_ref = reference(paths)
    n = args.photos
    body = (
        f"{n} JPEG photos of 1024 x 768, CLIP ViT-L/14 vision tower (random weights), "
        f"{torch.get_num_threads()} threads.\n\n"
        "| | photos / s | vs reference |\n|---|---:|---:|\n"
        f"| geoclip package, one photo at a time (its predict's image path) | {n / t_ref:.2f} | 1.00x |\n"
        f"| geoalign `features extract` (batch {args.batch_size}, float16 store) | "
        f"{n / t_ours:.2f} | {t_ref / t_ours:.2f}x |\n\n"
        f"Peak RSS of the geoalign extraction process: {rss_ours:,.0f} MB."
    )
    write_section("Feature extraction", body)
    print(body)


if __name__ == "__main__":
    main()
