"""Third-party banners and warnings do not reach a CLI user as raw lines with source paths."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import yaml

from geoalign.cli.app import _shown_warnings, _tame_third_party_output

ROOT = Path(__file__).resolve().parents[1]


def test_warnings_become_one_line_of_ours(capsys):
    lightning = "/venv/lib/python3.11/site-packages/lightning/pytorch/loops/fit_loop.py"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _tame_third_party_output()
        _shown_warnings.clear()
        warnings.warn_explicit(
            "Too few batches (3).\nSet a lower value.", UserWarning, lightning, 9
        )
        warnings.warn_explicit(
            "Too few batches (3).\nSet a lower value.", UserWarning, lightning, 9
        )
        warnings.warn_explicit("`LeafSpec` is deprecated", DeprecationWarning, lightning, 21)
        ours = str(ROOT / "src" / "geoalign" / "data" / "images.py")
        warnings.warn_explicit("old option", DeprecationWarning, ours, 5)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: Too few batches (3).", "warning: old option"]
    assert "site-packages" not in err and "LeafSpec" not in err


def test_train_prints_no_lightning_banner(tmp_path):
    config = {
        "model": {"init": "scratch", "queue_size": 0, "features": "x"},
        "data": {"source": "scene-labels", "path": "im2gps"},
        "optim": {"batch_size": 64, "max_steps": 1},
        "trainer": {"progress": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "-m", "geoalign.cli", "train", str(path), "--out", str(tmp_path / "r")]
        + ["--no-eval"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    for noise in ("GPU available", "TPU available", "litlogger", "site-packages", "LeafSpec"):
        assert noise not in res.stderr, res.stderr
