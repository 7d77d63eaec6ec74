"""Real SIGKILLs (subprocesses, tiny inputs): a killed command never leaves a truncated output,
and a rerun gives the output of an uninterrupted run.

Each killed process runs the real CLI with one library function wrapped so that it SIGKILLs its
own process at a chosen moment (half-way through writing a file, between two shard files, ...):
the kill is real (no cleanup runs, no exception is raised), only its timing is fixed, so the test
is deterministic and fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geoalign.models.registry import load_location_encoder

# Prepended to the CLI: np.save's array writer writes half its bytes, flushes, and SIGKILLs us.
_DIE_HALFWAY_THROUGH_NPY = """
import io, os, signal
import numpy.lib.format as fmt
_real = fmt.write_array
def _half_then_die(fp, array, *args, **kwargs):
    buf = io.BytesIO()
    _real(buf, array, *args, **kwargs)
    fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    fp.flush()
    os.kill(os.getpid(), signal.SIGKILL)
fmt.write_array = _half_then_die
"""


def geoalign(
    args: list[str], prelude: str = "", timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `geoalign args` in a fresh interpreter, after executing `prelude` in it."""
    code = f"{prelude}\nimport sys\nfrom geoalign.cli import main\nsys.argv = ['geoalign', *sys.argv[1:]]\nmain()\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# Run in one fresh CLI process: a complete embed-locations run, then the same run over its output,
# SIGKILLed half-way through writing the new file.
_COMPLETE_THEN_DIE_HALFWAY = (
    """
import sys
from geoalign.cli import app
app(args=sys.argv[1:], standalone_mode=False)
with open(sys.argv[-1], "rb") as fh:
    sys.stderr.write("complete:" + fh.read().hex() + "\\n")
"""
    + _DIE_HALFWAY_THROUGH_NPY
)


def test_embed_locations_killed_while_writing_leaves_no_partial_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    coords = np.c_[rng.uniform(-80, 80, 200), rng.uniform(-179, 179, 200)]
    src = tmp_path / "coords.csv"
    pd.DataFrame({"lat": coords[:, 0], "lon": coords[:, 1]}).to_csv(src, index=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "emb.npy"
    args = ["embed-locations", str(src), "--out", str(out)]

    killed = geoalign(args, _DIE_HALFWAY_THROUGH_NPY)
    assert killed.returncode == -9, killed.stderr
    assert _visible(out_dir) == []  # no 0-byte or truncated emb.npy, only a hidden temp file

    killed = geoalign(args, _COMPLETE_THEN_DIE_HALFWAY)  # a rerun, then a rerun over its output
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in out_dir.iterdir() if ".tmp-" not in p.name] == ["emb.npy"]
    assert len([p for p in out_dir.iterdir() if ".tmp-" in p.name]) == 1  # the first run's: gone
    complete = bytes.fromhex(killed.stderr.split("complete:")[1].split()[0])
    assert out.read_bytes() == complete  # the earlier output is intact
    expected = load_location_encoder("geoclip")(torch.tensor(coords, dtype=torch.float32))
    np.testing.assert_allclose(np.load(out), expected.detach().numpy(), atol=1e-6)
