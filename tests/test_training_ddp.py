"""Two CPU processes (torchrun, gloo) train exactly what one process trains on the same batches."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training_resume import run_script, weights  # noqa: E402


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    one = run_script(tmp_path, tmp_path / "one", 6)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_script(
        tmp_path,
        tmp_path / "two",
        6,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29517"],
        env={"DEVICES": "2", "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    # the global batch was really split: each process logged its own 32-row slice
    assert (tmp_path / "two" / "model" / "config.json").read_text().count('"world_size": 2') == 1
