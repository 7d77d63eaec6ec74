"""Draw the README's predict map (docs/predict-map.png) by running `geoalign predict` itself.

The photo is a real OSV-5M street photo from ../shared/data/osv5m_select (CC-BY-SA-4.0); the
model is the official GeoCLIP head, location encoder and 100K gallery; the backbone is a tiny
random CLIP tower of CLIP's output width, because no CLIP ViT-L/14 weights ship offline. So
the picture shows what `--png` draws (top-k, heatmap, 50/90% regions, median estimate), not how
good GeoCLIP is: with random image features the guess is poor and the regions are wide.

    python scripts/readme_map.py [--photo PATH] [--out docs/predict-map.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "osv5m_select" / "images"


def tiny_clip(folder: Path) -> Path:
    """A random CLIP vision tower with CLIP ViT-L/14's 768-d projection (seeded)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=768,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "predict-map.png")
    args = parser.parse_args()
    photo = args.photo
    if photo is None:
        found = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
        if not found:
            sys.exit(f"no photo: {PHOTOS} is absent; pass --photo PATH")
        photo = found[0]
    with tempfile.TemporaryDirectory() as tmp:
        backbone = tiny_clip(Path(tmp) / "tiny-clip")
        command = [
            sys.executable,
            "-m",
            "geoalign.cli",
            "predict",
            photo.name,  # run beside the photo: the map's title is its name, not a path
            "--backbone",
            f"hf:{backbone}",
            "--estimate",
            "median",
            "--regions",
            "0.5,0.9",
            "--png",
            str(args.out.resolve()),
        ]
        subprocess.run(command, check=True, cwd=photo.parent)
    print(f"{args.out} (photo {photo.name})")


if __name__ == "__main__":
    main()
