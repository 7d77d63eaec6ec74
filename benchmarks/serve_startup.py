"""`geoalign serve --model geoclip`: seconds from process start to /readyz 200, gallery cache
cold and then warm, with the official GeoCLIP head and location encoder (the `geoclip` wheel)
and CLIP ViT-L/14 from the local Hugging Face cache (offline: HF_HUB_OFFLINE=1).

    .venv/bin/python benchmarks/serve_startup.py [--warm-runs 2] [--stand-in-backbone]

Each start is a fresh `python -m geoalign.cli serve` on a free loopback port with its own
GEOALIGN_HOME: the converted official weights linked in (converted in the usual cache first if
they are not yet, as any first use does), the gallery-embedding cache empty for the cold start
and kept for the warm ones, so the user's own gallery cache is neither read nor changed.
"Ready" is the service's own definition: weights, backbone, gallery and its embeddings loaded
and one blank photo through the whole path.

Without the CLIP ViT-L/14 weights the script says what is missing and exits 1. With
`--stand-in-backbone` it runs anyway on a random tower of the same architecture saved as
safetensors (the same ~1.2 GB to read, the same forward pass), and the section says so.

Writes the "Serve: start-up to ready" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

HOST = "127.0.0.1"
CLIP_REPO = "openai/clip-vit-large-patch14"
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=768,
)


def official_geoclip() -> tuple[Path | None, str | None]:
    """The converted official GeoCLIP checkpoint (converted now if need be), or what is missing."""
    from geoalign.errors import GeoalignError
    from geoalign.models.weights import official_geoclip_dir

    try:
        return official_geoclip_dir(), None
    except (GeoalignError, ModuleNotFoundError, OSError) as err:
        return None, f"the official GeoCLIP weights (pip install geoclip==1.3.0): {err}"


def local_clip() -> tuple[Path | None, str]:
    """The folder of CLIP ViT-L/14 in GEOALIGN_CLIP_PATH or the local HF cache, else None and
    where it was looked for."""
    from geoalign.nn.backbones.hf_clip import CLIP_PATH_ENV
    from geoalign.nn.backbones.hub import hf_repo_cache_folder

    env = os.environ.get(CLIP_PATH_ENV[CLIP_REPO])
    folders = [Path(env)] if env else []
    repo = hf_repo_cache_folder(CLIP_REPO)
    folders += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    for folder in folders:
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
        if (folder / "config.json").is_file() and any(
            w.is_file() and w.stat().st_size > 500e6 for w in weights
        ):
            return folder, str(folder)
    where = f"${CLIP_PATH_ENV[CLIP_REPO]}" + (f" ({env})" if env else " (unset)")
    return None, f"{where} or {repo}"


def stand_in_clip(folder: Path) -> Path:
    """A random CLIP ViT-L/14 vision tower with projection, saved as safetensors."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14)).save_pretrained(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_to_ready(home: Path, backbone: str, log: Path, limit_s: float = 900) -> dict:
    """Start `geoalign serve`, poll /readyz every 50 ms; seconds to 200, the RSS then."""
    import httpx

    port = _free_port()
    env = {**os.environ, "GEOALIGN_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    args = [sys.executable, "-m", "geoalign.cli", "serve", "--model", "geoclip"]
    args += ["--gallery", "geoclip-100k", "--backbone", backbone, "--port", str(port)]
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while time.perf_counter() - started < limit_s:
                if proc.poll() is not None:
                    raise RuntimeError(f"geoalign serve exited ({proc.returncode}); see {log}")
                try:
                    res = httpx.get(f"http://{HOST}:{port}/readyz", timeout=2)
                    if res.status_code == 200:
                        return {
                            "seconds": time.perf_counter() - started,
                            "rss_mb": _rss_mb(proc.pid),
                        }
                    if res.status_code == 503 and "failed" in res.text:
                        raise RuntimeError(f"the model failed to load: {res.text}")
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"not ready after {limit_s:.0f} s; see {log}")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def breakdown_child() -> None:
    """Child process (`--breakdown-child BACKBONE`): where a warm start's seconds go, step by
    step as `Engine.load` takes them, printed as one JSON line."""
    import json

    t = time.perf_counter()
    steps: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = now - t
        t = now

    from geoalign.cli.app import app  # noqa: F401  (what `python -m geoalign.cli` imports)
    from geoalign.serve.app import create_app  # noqa: F401

    lap("imports (CLI, torch, transformers, FastAPI)")
    from geoalign.nn.backbones import load_backbone

    backbone = load_backbone(sys.argv[2])
    lap("backbone weights")
    from geoalign.inference.locator import Geolocator

    geo = Geolocator.from_pretrained("geoclip", backbone=backbone, gallery="geoclip-100k")
    lap("GeoCLIP head + encoder, 100K gallery and its cached embeddings")
    from geoalign.models.registry import checkpoint_config
    from geoalign.serve.config import ServeConfig
    from geoalign.serve.engine import Engine, model_card

    config = ServeConfig()
    engine = Engine(geo, config, model_card(config, checkpoint_config("geoclip"), geo))
    engine.warm_up()
    lap("warm-up: first forward pass, place index, smoothing grid, mode seeker")
    engine.warm_up()
    lap("(a second warm-up photo: the forward pass and ranking alone)")
    print(json.dumps(steps))


def breakdown(home: Path, backbone: str) -> dict[str, float]:
    import json

    env = {**os.environ, "GEOALIGN_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, __file__, "--breakdown-child", backbone],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=2, help="starts with the cache warm")
    parser.add_argument(
        "--stand-in-backbone",
        action="store_true",
        help="without CLIP ViT-L/14 locally: time a random tower of its size instead",
    )
    args = parser.parse_args()
    if args.warm_runs < 1:
        parser.error("--warm-runs must be at least 1")
    geoclip_dir, missing_geoclip = official_geoclip()
    clip_dir, clip_where = local_clip()
    missing = [m for m in (missing_geoclip,) if m]
    if clip_dir is None:
        missing.append(f"CLIP ViT-L/14 ({CLIP_REPO}): not in {clip_where}")
    if missing_geoclip or (clip_dir is None and not args.stand_in_backbone):
        for m in missing:
            print(f"serve_startup: missing {m}", file=sys.stderr)
        if clip_dir is None and not missing_geoclip:
            print(
                "serve_startup: fetch CLIP where there is a network (huggingface-cli download "
                f"{CLIP_REPO}), or time a same-size stand-in with --stand-in-backbone",
                file=sys.stderr,
            )
        return 1
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-startup-") as tmp:
        root = Path(tmp)
        home = root / "home"
        (home / "zoo").mkdir(parents=True)
        (home / "zoo" / geoclip_dir.name).symlink_to(geoclip_dir)  # read, never written
        if clip_dir is not None:
            backbone, what = "clip-vit-l14", f"CLIP ViT-L/14 from {clip_dir}"
        else:
            print("serve_startup: saving a random ViT-L/14-sized stand-in ...", file=sys.stderr)
            backbone = f"hf:{stand_in_clip(root / 'vit-l14')}"
            what = (
                "**stand-in backbone**: CLIP ViT-L/14 is not in this machine's HF cache, so a "
                "random tower of the same architecture, saved as safetensors, was read instead "
                "(the vision tower's weights and forward pass, not the real values)"
            )
        log = root / "serve.log"
        runs = []
        for n in range(1 + args.warm_runs):
            kind = "cold" if n == 0 else "warm"
            print(f"serve_startup: start {n + 1} ({kind} gallery cache) ...", file=sys.stderr)
            runs.append((kind, start_to_ready(home, backbone, log)))
            print(f"  ready in {runs[-1][1]['seconds']:.1f} s", file=sys.stderr)
        cached = sorted(p.name for p in (home / "gallery-embeddings").glob("*.npy"))
        print("serve_startup: a warm start, step by step ...", file=sys.stderr)
        steps = breakdown(home, backbone)
    rows = "\n".join(
        f"| {n + 1} | {kind} | {r['seconds']:.1f} | {r['rss_mb']:.0f} |"
        for n, (kind, r) in enumerate(runs)
    )
    warm = [r["seconds"] for kind, r in runs if kind == "warm"]
    step_rows = "\n".join(f"| {name} | {sec:.1f} |" for name, sec in steps.items())
    cold = runs[0][1]["seconds"]
    cmd = "benchmarks/serve_startup.py" + (" --stand-in-backbone" if clip_dir is None else "")
    body = f"""
`geoalign serve --model geoclip --gallery geoclip-100k` (official GeoCLIP head and location
encoder from the `geoclip` wheel, 100K gallery), one worker, CPU, offline; seconds from process
start to the first `/readyz` 200 (weights, backbone, gallery embeddings loaded and one blank
photo through the whole path), RSS then. Backbone: {what}. `{cmd}`; load average
{load[0]:.1f} / {load[1]:.1f} at the start (1 / 5 min, {os.cpu_count()} cores).

| start | gallery cache | seconds to ready | RSS MB |
|---:|---|---:|---:|
{rows}

Cold (the 100K location embeddings computed and cached on the way): **{cold:.1f} s**; warm
(read from the cache, {len(cached)} file): **{min(warm):.1f} s** (best of {len(warm)}).
{"The machine was shared with other jobs (load average above its core count): an idle one starts faster." if load[0] > (os.cpu_count() or 1) else ""}

Where a warm start goes, step by step in one process (the same calls as `Engine.load`; the
server's own uvicorn start and the `/readyz` polling are not in it):

| step | seconds |
|---|---:|
{step_rows}
"""
    write_section("Serve: start-up to ready", body)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--breakdown-child":
        breakdown_child()
    else:
        sys.exit(main())
