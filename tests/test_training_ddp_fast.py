"""Fast DDP check for every test run (the slow suite has the 6-step version): two CPU processes
(torchrun, gloo) train 2 steps of a tiny run, and get the weights one process trains in-process
on the same batches, with the global batch split between the ranks."""

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training_resume import run_script, tiny_run, weights  # noqa: E402

STEPS = 2


def test_two_process_ddp_matches_one_process_in_two_steps(tmp_path):
    from geoalign.training.run import train

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    two = run_script(
        tmp_path,
        tmp_path / "two",
        STEPS,
        launcher=[torchrun, "--nproc_per_node", "2", "--master_port", "29533"],
        env={"DEVICES": "2", "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    cfg, arrays = tiny_run(str(tmp_path / "one"), STEPS)
    one = train(cfg, arrays=arrays, progress=False)
    assert one.global_step == STEPS
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    assert (tmp_path / "two" / "model" / "config.json").read_text().count('"world_size": 2') == 1
    # and two steps moved the weights: not two untouched initialisations compared
    import lightning as L

    from geoalign.training.run import build_model

    L.seed_everything(cfg.trainer.seed, verbose=False)
    init = build_model(cfg, arrays[0].shape[1]).checkpoint_state()
    assert not torch.allclose(init["image_head.net.0.weight"], a["image_head.net.0.weight"])
