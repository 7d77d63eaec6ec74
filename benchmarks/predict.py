"""Per-photo prediction latency, peak memory and gallery search: ours vs the geoclip package.

    .venv/bin/python benchmarks/predict.py [--part latency|rss|search|all] [--quick]

The backbone is CLIP ViT-L/14's vision tower built from its config with random weights: the cost
is the same as with the real weights, which this machine cannot download. `--part rss` also runs
the `geoalign predict` command itself, each variant in a fresh process, on a full random-weight
CLIP checkpoint folder it writes first (1.7 GB in a temporary folder). Writes the "Predict"
sections of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import best_time, peak_rss_mb, write_section  # noqa: E402

warnings.filterwarnings("ignore")
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=768,
)


def _photo(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _ours():
    from transformers import CLIPVisionConfig

    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model
    from geoalign.nn.backbones import ClipBackbone

    backbone = ClipBackbone.from_config(CLIPVisionConfig(**VIT_L14))
    return Geolocator(
        load_model("geoclip"), backbone=backbone, gallery=load_gallery("geoclip-100k")
    )


def _mapped(clip_dir: str, *, release: bool):
    """A Geolocator over the checkpoint folder's vision tower (memory-mapped, as predict's)."""
    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model
    from geoalign.nn.backbones import load_backbone

    return Geolocator(
        load_model("geoclip"),
        backbone=load_backbone(f"hf:{clip_dir}"),
        gallery=load_gallery("geoclip-100k"),
        release_weight_pages=release,
    )


def _reference():
    from geoclip import GeoCLIP

    return GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()


def _clip_checkpoint(folder: Path) -> Path:
    """A full (text + vision) ViT-L/14 CLIP checkpoint with random weights, as `save_pretrained`
    writes openai/clip-vit-large-patch14: what `geoalign predict` reads (vision tower only)."""
    from transformers import CLIPConfig, CLIPModel

    vision = {**VIT_L14}
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
    text.update(num_attention_heads=12, projection_dim=768)
    torch.manual_seed(0)
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=768)
    CLIPModel(config).save_pretrained(folder)
    return folder


def _cli(args: list[str]) -> None:
    from geoalign.cli import main

    sys.argv = ["geoalign", *args]
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise


def rss_child(which: str, photo: str, clip_dir: str | None = None) -> None:
    """Run one warm-free, one-photo predict in this (fresh) process and print its peak RSS."""
    cli = ["predict", photo, "--backbone", f"hf:{clip_dir}", "--quiet"]
    if which == "ours":
        g = _ours()
        g.predict([photo], top_k=5)
    elif which == "api-keep-pages":
        _mapped(clip_dir, release=False).predict([photo], top_k=5)
    elif which == "page-cost":  # warm one-photo predict with and without releasing pages
        geos = {r: _mapped(clip_dir, release=r) for r in (True, False)}
        times = {r: best_time(lambda g=g: g.predict([photo], top_k=5)) for r, g in geos.items()}
        times = {r: best_time(lambda g=g: g.predict([photo], top_k=5)) for r, g in geos.items()}
        print(json.dumps({"peak_rss_mb": 0, "release_s": times[True], "keep_s": times[False]}))
        return
    elif which == "cli":
        _cli(cli)
    elif which == "cli-no-places":
        _cli([*cli, "--no-places"])
    elif which == "cli-bf16":
        _cli([*cli, "--bf16"])
    elif which == "cli-bf16-no-places":
        _cli([*cli, "--bf16", "--no-places"])
    elif which == "imports":  # what predict imports, nothing loaded: the floor under it all
        import torchvision  # noqa: F401
        import transformers.models.clip.modeling_clip  # noqa: F401

        import geoalign.cli.predict  # noqa: F401
        import geoalign.inference.locator  # noqa: F401
    else:
        with torch.inference_mode():
            _reference().predict(photo, 5)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def latency(tmp: Path, quick: bool) -> str:
    photo = _photo(tmp / "photo.jpg")
    batch = [str(_photo(tmp / f"p{i}.jpg", i)) for i in range(8 if quick else 64)]
    t0 = time.perf_counter()
    ours = _ours()
    build = time.perf_counter() - t0
    one = best_time(lambda: ours.predict([str(photo)], top_k=5), repeats=3)
    many = best_time(lambda: ours.predict(batch, top_k=5, batch_size=len(batch)), repeats=1)
    from PIL import Image

    emb = ours.embed_pixels(ours.backbone.transform(Image.open(photo))[None])
    gallery_stage = best_time(lambda: ours.rank(emb, top_k=5), repeats=20)
    from geoalign.inference.search import GallerySearch

    exact = ours.search
    ours.search = GallerySearch(exact.embeddings, exact.scale, precision="float16")
    half_stage = best_time(lambda: ours.rank(emb, top_k=5), repeats=20)
    ours.search = exact
    ref = _reference()
    with torch.inference_mode():
        ref_one = best_time(lambda: ref.predict(str(photo), 5), repeats=1)
    rows = [
        "| | geoclip package | geoalign | ratio |",
        "|---|---:|---:|---:|",
        f"| one photo, warm (s) | {ref_one:.2f} | {one:.3f} | {ref_one / one:.1f}× |",
        f"| per photo in a batch of {len(batch)} (s) | {ref_one:.2f} | {many / len(batch):.3f} | "
        f"{ref_one / (many / len(batch)):.1f}× |",
        f"| gallery stage, one query, 100K (ms) | — | {1e3 * gallery_stage:.2f} | |",
        f"| gallery stage with `--half-gallery` (ms) | — | {1e3 * half_stage:.2f} | |",
    ]
    note = (
        f"\nFirst Geolocator build (gallery embedded and cached, or read from the cache): "
        f"{build:.1f} s. The reference re-encodes the 100K gallery inside every predict call."
    )
    return "\n".join(rows) + note


RSS_ROWS = {
    "reference": "geoclip package, `GeoCLIP.predict` (random CLIP, official head + gallery)",
    "ours": "geoalign `Geolocator.predict`, ViT-L/14 built in memory (random)",
    "api-keep-pages": "`Geolocator.predict`, ViT-L/14 checkpoint folder, "
    "`release_weight_pages=False` (the weights' pages all stay resident)",
    "cli-no-places": "`geoalign predict PHOTO --no-places` (ViT-L/14 checkpoint folder)",
    "cli": "`geoalign predict PHOTO` (the default: place names too)",
    "cli-bf16": "`geoalign predict PHOTO --bf16` (weights in bfloat16: outputs differ)",
    "cli-bf16-no-places": "`geoalign predict PHOTO --bf16 --no-places`",
    "imports": "(floor) only importing what predict imports: torch, torchvision, transformers",
}


def rss(tmp: Path) -> str:
    photo = str(_photo(tmp / "photo.jpg"))
    clip_dir = str(_clip_checkpoint(tmp / "clip-vit-l14"))
    out = {}
    for which in RSS_ROWS:
        res = subprocess.run(
            [sys.executable, __file__, "--rss-child", which, photo, clip_dir],
            capture_output=True,
            text=True,
            check=True,
        )
        out[which] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    cost = subprocess.run(
        [sys.executable, __file__, "--rss-child", "page-cost", photo, clip_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    cost = json.loads(cost.stdout.strip().splitlines()[-1])
    ref = out["reference"]
    rows = [
        "| peak RSS of a one-photo predict, fresh process | MB | / reference |",
        "|---|---:|---:|",
    ]
    rows += [f"| {RSS_ROWS[w]} | {mb:,.0f} | {mb / ref:.2f} |" for w, mb in out.items()]
    weights_mb = sum(p.numel() for p in _vision_params()) * 4 / 2**20
    return "\n".join(rows) + (
        f"\n\nTarget: `geoalign predict` <= 0.5x the reference ({0.5 * ref:,.0f} MB). Imports "
        f"alone take {out['imports']:,.0f} MB (torch with its CUDA libraries, torch._dynamo "
        "pulled in by torchvision and transformers, pandas). The ViT-L/14 vision tower is "
        f"{weights_mb:,.0f} MB of float32 weights memory-mapped from the checkpoint's "
        "safetensors (no copy; the text tower is never read); by default each module's pages "
        "are given back to the page cache right after its forward "
        "(`geoalign.nn.backbones.mapped_pages`), so they never all stay resident, as the "
        "`release_weight_pages=False` row shows they otherwise do. The rest is the 100K "
        f"gallery's float32 embeddings ({_gallery_mb():,.0f} MB), the GeoCLIP head and location "
        "encoder, the place index (default command) and the forward pass. The cost: the next "
        "forward reads the pages back from the page cache; a warm one-photo "
        f"`Geolocator.predict` took {cost['release_s']:.2f} s releasing them and "
        f"{cost['keep_s']:.2f} s keeping them (best of 3 each, same process, "
        f"{cost['release_s'] / cost['keep_s']:.2f}x). The random-weight checkpoint folder "
        "is written by this benchmark (`save_pretrained` of a full CLIP) because the real "
        "weights cannot be downloaded here; the cost is the same."
    )


def _gallery_mb() -> float:
    from geoalign.data.galleries import load_gallery
    from geoalign.nn.location_encoder import LocationEncoderConfig

    return len(load_gallery("geoclip-100k")) * LocationEncoderConfig().embed_dim * 4 / 2**20


def _vision_params():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        return list(CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14)).parameters())


def search(quick: bool) -> str:
    from geoalign.data.galleries import load_gallery
    from geoalign.inference.gallery_cache import gallery_embeddings
    from geoalign.inference.search import GallerySearch
    from geoalign.models.registry import load_location_encoder, load_logit_scale

    base = gallery_embeddings(
        load_location_encoder(), load_gallery("geoclip-100k")[["lat", "lon"]].to_numpy()
    )
    scale = float(load_logit_scale().exp())
    gen = torch.Generator().manual_seed(0)
    queries = base[torch.randint(0, len(base), (64,), generator=gen)]
    queries = queries + 0.02 * torch.randn(queries.shape, generator=gen)
    rows = [
        "| gallery | backend | ms / query (batch 64) | recall@1 vs exact |",
        "|---|---|---:|---:|",
    ]
    for size in (100_000,) if quick else (100_000, 1_000_000):
        reps = size // len(base)
        # Larger galleries: the real embeddings plus small jitter (a denser sampling of the globe).
        emb = base.repeat(reps, 1)
        if reps > 1:
            emb[len(base) :] += 0.01 * torch.randn(emb[len(base) :].shape, generator=gen)
        exact = GallerySearch(emb, scale, backend="exact")
        t_exact = best_time(lambda exact=exact: exact.topk(queries, 5), repeats=3)
        truth = exact.topk(queries, 1).indices[:, 0]
        rows.append(f"| {size:,} | exact matmul | {1e3 * t_exact / 64:.2f} | 1.000 |")
        approx = GallerySearch(emb, scale, backend="faiss")
        approx.topk(queries[:1], 1)  # builds the index
        t_f = best_time(lambda approx=approx: approx.topk(queries, 5), repeats=3)
        recall = (approx.topk(queries, 1).indices[:, 0] == truth).float().mean().item()
        rows.append(f"| {size:,} | FAISS IVF-Flat | {1e3 * t_f / 64:.2f} | {recall:.3f} |")
        scan = GallerySearch(emb, scale, backend="int8")  # the default beyond EXACT_MAX
        t_s = best_time(lambda scan=scan: scan.topk(queries, 5), repeats=3)
        recall = (scan.topk(queries, 1).indices[:, 0] == truth).float().mean().item()
        rows.append(
            f"| {size:,} | int8 scan + exact rerank | {1e3 * t_s / 64:.2f} | {recall:.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="all", choices=["latency", "rss", "search", "all"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss-child", nargs=3, metavar=("WHICH", "PHOTO", "CLIP_DIR"))
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.part in ("latency", "all"):
            write_section("Predict: latency (ViT-L/14, 100K gallery)", latency(tmp, args.quick))
        if args.part in ("rss", "all"):
            write_section("Predict: peak memory", rss(tmp))
        if args.part in ("search", "all"):
            write_section("Predict: gallery search", search(args.quick))


if __name__ == "__main__":
    main()
