"""`geoalign train` on the quickstart's config (shrunk), killed with SIGKILL after its first
checkpoint and run again: it resumes (the config says `trainer.resume: null`; the CLI's default
--resume wins) and ends with the uninterrupted run's weights."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from geoalign.training.config import packaged_configs

SRC = Path(__file__).resolve().parents[1] / "src"


def shrunk_quickstart(tmp_path: Path) -> Path:
    data = yaml.safe_load((packaged_configs() / "geoclip" / "quickstart.yaml").read_text())
    assert data["trainer"]["resume"] is None  # the setting that used to beat --resume
    data["data"]["fraction"] = 0.1  # 2,560 of YFCC26k's rows: 5 steps of 512 an epoch
    data["optim"]["epochs"] = 2  # the lr decays once in between
    data["trainer"].update(checkpoint_every_n_steps=3, log_every_n_steps=1, progress=False)
    path = tmp_path / "quickstart-small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def command(config: Path, out: Path) -> list[str]:
    main = "import sys; from geoalign.cli import main; sys.argv[0] = 'geoalign'; main()"
    return [sys.executable, "-c", main, "train", str(config), "--out", str(out), "--no-eval"]


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(config: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(config, out), env=environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_sigkilled_quickstart_training_resumes_to_the_same_weights(tmp_path):
    config = shrunk_quickstart(tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(config, killed),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert ckpt.is_file() and not (killed / "model").exists()

    resumed = run(config, killed)
    start = int(re.search(r"resuming from \S+ \(step (\d+)\)", resumed.stderr).group(1))
    trained = int(re.search(r"done: (\d+) steps in", resumed.stderr).group(1))
    assert start >= 3 and trained == 10 - start  # 2 epochs x 5 steps; earlier ones not redone
    assert "10 in all" in resumed.stderr
    for banner in ("GPU available", "TPU available", "litlogger", "Restoring states"):
        assert banner not in resumed.stderr  # Lightning's lines: geoalign says its own

    # the uninterrupted run, in this process (the same config, the API's resume: null)
    from geoalign.training.config import load_config
    from geoalign.training.run import train

    whole = tmp_path / "whole"
    train(load_config(config, [f"trainer.out_dir={whole}"]))
    a = load_file(str(whole / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    # one metrics log: every step once, across the kill
    steps = pd.read_csv(killed / "logs" / "metrics.csv").dropna(subset=["train/loss"])["step"]
    assert sorted(steps) == list(range(10))


def test_a_step_checkpoint_is_written_after_the_metrics_rows_it_covers(tmp_path):
    """Deterministic form of the race above: whenever last.ckpt for step N is written, the
    metrics rows of steps 0..N-1 are already in metrics.csv (Lightning hands a step's row to
    the logger only after that step's checkpoint), and no row is written twice."""
    import lightning as L

    from geoalign.training.config import load_config
    from geoalign.training.run import train

    out = tmp_path / "run"
    seen: dict[int, list[int]] = {}

    class Look(L.Callback):  # called while a checkpoint is made, before it is written
        def on_save_checkpoint(self, trainer, *args, **kwargs):
            if trainer.global_step % 3 == 0 and trainer.global_step < 10:
                csv = out / "logs" / "metrics.csv"
                rows = pd.read_csv(csv).dropna(subset=["train/loss"]) if csv.is_file() else None
                seen[trainer.global_step] = [] if rows is None else sorted(rows["step"])

    cfg = load_config(shrunk_quickstart(tmp_path), [f"trainer.out_dir={out}"])
    train(cfg, extra_callbacks=[Look()], progress=False)
    assert seen and all(rows == list(range(step)) for step, rows in seen.items()), seen
    steps = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["train/loss"])["step"]
    assert sorted(steps) == list(range(10))
