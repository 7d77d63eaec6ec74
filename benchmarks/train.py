"""Training throughput from features (batch 512 + GPS queue 4096): geoalign vs the geoclip package's
own trainer (geoclip/train/train.py), in the same run; and streaming from a 4.7M-row feature store.

    .venv/bin/python benchmarks/train.py [--steps 8] [--rounds 2] [--store-rows 4720000]
                                         [--store-dir /tmp/geoalign-bench-store] [--skip-store]

The reference trainer is run as shipped: its GeoCLIP model with the official weights, its queue
(4096) and its loop; only the frozen CLIP ViT-L/14 in front of its image MLP is bypassed, because
both trainers read precomputed features. Both start from the official weights and train the image
MLP, the location encoder and the temperature with Adam (3e-5, weight decay 1e-6).

geoalign runs: "published" (GeoCLIP's eq. 4 with GPS noise; queue embeddings recomputed with
gradients each step, like the reference), "detached" (queue re-encoded without gradients) and
"cached" (a memory bank: each queue embedding kept from the step it was enqueued). The rounds
alternate reference and geoalign so that a busy machine slows both alike.

Writes the "Training throughput" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

warnings.filterwarnings("ignore")
BATCH, QUEUE, DIM = 512, 4096, 768


def training_data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random CLIP-sized features paired with real MP-16 coordinates (the official gallery)."""
    from geoalign.data.galleries import load_gallery

    coords = load_gallery("geoclip-100k")[["lat", "lon"]].to_numpy()
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(coords), n_rows, replace=n_rows > len(coords))
    return rng.normal(size=(n_rows, DIM)).astype(np.float32), coords[rows]


# --- the reference: geoclip's train() on its own model -------------------------------------------


def reference_step_times(feats: np.ndarray, coords: np.ndarray, steps: int) -> list[float]:
    import importlib

    from geoclip.train.train import train as reference_train
    from torch import nn

    class FeatureImageEncoder(nn.Module):  # geoclip's ImageEncoder minus the frozen CLIP
        def __init__(self, *args, **kwargs):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 512))

        def forward(self, x):
            return self.mlp(x)

    geoclip_model = importlib.import_module("geoclip.model.GeoCLIP")  # the module, not the class
    original = geoclip_model.ImageEncoder
    geoclip_model.ImageEncoder = FeatureImageEncoder
    try:
        model = geoclip_model.GeoCLIP(from_pretrained=True, queue_size=QUEUE)
    finally:
        geoclip_model.ImageEncoder = original
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-5, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.87)
    data = torch.utils.data.TensorDataset(torch.from_numpy(feats), torch.from_numpy(coords).float())
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)
    stamps: list[float] = []

    class Timed:  # the reference loop takes any iterable with len(); we note when it asks for more
        def __len__(self):
            return steps

        def __iter__(self):
            for i, batch in enumerate(loader):
                if i >= steps:
                    break
                stamps.append(time.perf_counter())
                yield batch
            stamps.append(time.perf_counter())

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        reference_train(Timed(), model, optimizer, 0, BATCH, "cpu", scheduler=scheduler)
    return list(np.diff(stamps))


# --- geoalign -------------------------------------------------------------------------------------


def geoalign_step_times(feats, coords, steps: int, queue_mode: str, out: Path) -> list[float]:
    import lightning as L

    from geoalign.training.config import config_from_dict
    from geoalign.training.run import train

    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.t)

    cfg = config_from_dict(
        {
            "model": {"init": "official", "queue_size": QUEUE, "queue_mode": queue_mode},
            "data": {"source": "arrays"},
            "optim": {"batch_size": BATCH, "max_steps": steps, "epochs": 1},
            "trainer": {
                "out_dir": str(out),
                "resume": None,
                "progress": False,
                "checkpoint_every_n_steps": 10**9,
                "log_every_n_steps": 10**6,
            },
        }
    )
    train(cfg, arrays=(feats, coords), extra_callbacks=[Timer()], progress=False)
    return times


# --- the feature store ----------------------------------------------------------------------------


SHARD_ROWS = 16384


def build_store(path: Path, rows: int, dim: int = DIM, shard: int = SHARD_ROWS) -> Path:
    """A float16 store of `rows` random features with MP-16 coordinates, written shard by shard."""
    from geoalign.data.feature_store import FeatureStore, FeatureStoreWriter

    if (path / "index.json").is_file():
        store = FeatureStore(path)
        if len(store) == rows and store.dim == dim and store.complete:
            return path
    from geoalign.data.galleries import load_gallery

    gallery = load_gallery("geoclip-100k")[["lat", "lon"]].to_numpy()
    rng = np.random.default_rng(0)
    writer = FeatureStoreWriter(
        path,
        dim,
        "float16",
        shard,
        total=rows,
        backbone="synthetic",
        source="benchmark",
        overwrite=True,
    )
    for start in range(0, rows, shard):
        n = min(shard, rows - start)
        feats = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
        coords = gallery[rng.integers(0, len(gallery), n)]
        writer.add(feats, coords, [str(i) for i in range(start, start + n)])
    writer.finalize()
    return path


# Runs in a child process; its peaks are the child's own VmHWM (getrusage's ru_maxrss carries the
# parent's peak over the exec on Linux, so it would report the benchmark process instead).
STORE_PROBE = r"""
import json, sys, time
import numpy as np
store, steps = sys.argv[1], int(sys.argv[2])
def vmhwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")
from geoalign.training.data import EpochLoader, StoreSource
src = StoreSource(store)
loader = EpochLoader(src, 512, 0, position=lambda: (0, 0))
t = time.perf_counter(); rows = 0
for batch in loader:
    rows += len(batch["coords"])
epoch_s = time.perf_counter() - t
stream_rss = vmhwm_mb()
from geoalign.training.config import config_from_dict
from geoalign.training.run import train
cfg = config_from_dict({"model": {"init": "official", "queue_size": 4096},
    "data": {"source": "store", "path": store},
    "optim": {"batch_size": 512, "max_steps": steps, "epochs": 1},
    "trainer": {"out_dir": sys.argv[3], "resume": None, "progress": False,
                "checkpoint_every_n_steps": 10**9}})
t = time.perf_counter(); r = train(cfg, progress=False); train_s = time.perf_counter() - t
print(json.dumps({"rows": rows, "epoch_s": epoch_s, "stream_rss_mb": stream_rss,
    "train_steps": r.global_step, "train_s": train_s, "samples_per_s": r.samples_per_s,
    "peak_rss_mb": vmhwm_mb()}))
"""


def store_probe(path: Path, steps: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", STORE_PROBE, str(path), str(steps), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=7200,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store-rows", type=int, default=4_720_000)
    parser.add_argument(
        "--store-dir", type=Path, default=Path(tempfile.gettempdir()) / "geoalign-bench-store"
    )
    parser.add_argument("--store-steps", type=int, default=4)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--keep-store", action="store_true")
    args = parser.parse_args()

    warm = 2  # first steps allocate and fault in pages: not timed
    feats, coords = training_data(BATCH * (args.steps + warm + 1))
    runs: dict[str, list[float]] = {"reference": [], "published": [], "detached": [], "cached": []}
    load: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            load.append(os.getloadavg()[0])
            runs["reference"] += reference_step_times(feats, coords, args.steps + warm)[warm:]
            for mode in ("published", "detached", "cached"):
                t = geoalign_step_times(
                    feats, coords, args.steps + warm, mode, Path(tmp) / f"{mode}{r}"
                )
                runs[mode] += t[warm:]
            load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    rate = {k: BATCH / v for k, v in med.items()}
    lines = [
        f"Batch {BATCH} + queue {QUEUE}, CLIP-sized features (768-d), official weights, Adam "
        f"3e-5; median of {args.rounds} x {args.steps} steps after {warm} warm-up steps each; "
        f"1-min load average during the runs {min(load):.1f}-{max(load):.1f} on "
        f"{os.cpu_count()} cores.",
        "",
        "| trainer | s / step | samples / s | vs reference |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "reference": "geoclip package, geoclip/train/train.py",
        "published": "geoalign, queue re-encoded with gradients (as published)",
        "detached": "geoalign, queue re-encoded without gradients",
        "cached": "geoalign, cached queue embeddings (memory bank)",
    }
    for k in runs:
        lines.append(
            f"| {labels[k]} | {med[k]:.2f} | {rate[k]:,.0f} | {rate[k] / rate['reference']:.2f}x |"
        )
    lines += [
        "",
        "The reference has no GPS noise and initialises its queue near (0, 0) (randn, "
        "normalised); geoalign adds the paper's noise (150 m / 1 km) and a uniform queue. The "
        "geoalign rows differ only in how the queue's location embeddings are computed.",
    ]
    if not args.skip_store:
        t = time.perf_counter()
        store = build_store(args.store_dir, args.store_rows)
        build_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            probe = store_probe(store, args.store_steps, Path(tmp) / "run")
        size_gb = sum(p.stat().st_size for p in store.glob("shard-*.npy")) / 1e9
        lines += [
            "",
            f"Feature store: {probe['rows']:,} rows streamed ({args.store_rows:,} x {DIM} float16, "
            f"{size_gb:.1f} GB in {SHARD_ROWS:,}-row shards; built in {build_s:.0f} s). One full epoch "
            f"through the training loader: {probe['epoch_s']:.0f} s "
            f"({probe['rows'] / probe['epoch_s']:,.0f} rows/s), peak RSS (VmHWM) "
            f"{probe['stream_rss_mb']:,.0f} MB; then {probe['train_steps']} training steps from "
            f"the store ({probe['samples_per_s'] or 0:,.0f} samples/s), peak RSS of that process "
            f"{probe['peak_rss_mb']:,.0f} MB.",
        ]
        if not args.keep_store:
            import shutil

            shutil.rmtree(store, ignore_errors=True)
    write_section("Training throughput", "\n".join(lines))


if __name__ == "__main__":
    main()
