"""Kill a training run with SIGKILL, resume it, and get the uninterrupted run's weights."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


def tiny_run(out: str, max_steps: int, devices: int = 1):
    """A small but complete run: scratch model, GPS queue, GPS noise, lr decay every epoch."""
    from geoalign.training.config import config_from_dict

    rng = np.random.default_rng(0)
    coords = np.stack([rng.uniform(-60, 60, 512), rng.uniform(-180, 180, 512)], 1)
    feats = np.concatenate([coords / 90, rng.normal(size=(512, 10))], 1).astype("f4")
    cfg = config_from_dict(
        {
            "model": {
                "init": "scratch",
                "queue_size": 64,
                "location_encoder": {
                    "n_frequencies": 16,
                    "hidden_dim": 32,
                    "n_hidden": 1,
                    "embed_dim": 16,
                },
                "image_head": {"hidden_dim": 24, "out_dim": 16},
            },
            "data": {"source": "arrays", "gps_noise_m": 150.0, "queue_noise_m": 1000.0},
            "optim": {
                "lr": 1e-2,
                "batch_size": 64,
                "epochs": 3,
                "max_steps": max_steps,
                "gamma": 0.5,
            },
            "trainer": {
                "out_dir": out,
                "checkpoint_every_n_steps": 2,
                "resume": "auto",
                "progress": False,
                "devices": devices,
                "accelerator": "cpu",
            },
        }
    )
    return cfg, (feats, coords)


def main() -> None:
    """Subprocess entry: train_tiny OUT MAX_STEPS KILL_AT (0: never); devices from $DEVICES."""
    import signal

    import lightning as L

    from geoalign.training.run import train

    out, max_steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cfg, arrays = tiny_run(out, max_steps, int(os.environ.get("DEVICES", "1")))

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    train(cfg, arrays=arrays, extra_callbacks=[Kill()] if kill_at > 0 else [])


def run_script(
    tmp_path: Path, out: Path, max_steps: int, kill_at: int = 0, launcher=None, env=None
):
    script = tmp_path / "train_tiny.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nfrom test_training_resume import main\nmain()\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    cmd = [*(launcher or [sys.executable]), str(script), str(out), str(max_steps), str(kill_at)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    # 512 rows / batch 64 = 8 steps an epoch: 20 steps cross two epoch boundaries (lr decays).
    whole = run_script(tmp_path, tmp_path / "whole", 20)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = run_script(tmp_path, tmp_path / "killed", 20, kill_at=11)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, one step after a checkpoint
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "model").exists()

    resumed = run_script(tmp_path, tmp_path / "killed", 20)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "(step 10)" in resumed.stderr
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k

    # and training moved the weights: this is not two untouched initialisations compared
    import lightning as L

    from geoalign.training.run import build_model

    cfg, (feats, _) = tiny_run(str(tmp_path / "unused"), -1)
    L.seed_everything(cfg.trainer.seed, verbose=False)
    init = build_model(cfg, feats.shape[1]).checkpoint_state()
    assert not torch.allclose(
        init["image_head.net.0.weight"], a["image_head.net.0.weight"], atol=1e-3
    )
    assert not torch.equal(
        init["queue.coords"], a["queue.coords"]
    )  # the queue took batch coordinates


def _metrics(out: Path):
    import pandas as pd

    return pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["train/loss"])


def test_resumed_run_continues_one_metrics_file(tmp_path):
    """Lightning's CSVLogger would delete metrics.csv on resume; ours keeps the rows before the
    checkpoint, drops the ones after it (those steps run again) and logs each step once."""
    from dataclasses import replace

    from geoalign.training.run import train

    def run(out: Path, max_steps: int, every: int, resume: str | None = "auto"):
        cfg, arrays = tiny_run(str(out), max_steps)
        cfg.trainer = replace(
            cfg.trainer, log_every_n_steps=1, checkpoint_every_n_steps=every, resume=resume
        )
        train(cfg, arrays=arrays, progress=False)

    run(tmp_path / "whole", 12, 4)
    run(tmp_path / "split", 6, 4)  # stops mid-epoch; a longer run resumes from last.ckpt (step 4)
    assert sorted(_metrics(tmp_path / "split")["step"]) == list(range(6))
    run(tmp_path / "split", 12, 4)
    whole, split = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert list(split["step"]) == list(range(12))
    assert np.allclose(whole["train/loss"], split["train/loss"], atol=1e-6)

    run(tmp_path / "split", 3, 4, resume=None)  # a fresh run in the same folder starts anew
    assert list(_metrics(tmp_path / "split")["step"]) == [0, 1, 2]
