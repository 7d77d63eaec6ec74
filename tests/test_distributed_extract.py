"""Distributed feature extraction: ranks write disjoint crash-safe parts, the merge is
byte-identical (order included) to one process, a SIGKILLed rank resumes, torchrun works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoalign.data.feature_store import FeatureStore, extract_features, merge_parts, part_dir
from geoalign.data.manifest import Manifest, load_manifest
from geoalign.errors import DataError

N = 23  # shard size 4 -> 6 store shards, the last one short
HERE = Path(__file__).parent
SRC = HERE.parent / "src"


def _encode(images: list[Image.Image]) -> np.ndarray:
    """Deterministic features from pixels: a 2x2 thumbnail (12 values)."""
    out = [np.asarray(im.resize((2, 2)), dtype=np.float32).reshape(-1) / 255.0 for im in images]
    return np.stack(out)


def _photos(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    names = []
    for i in range(N):
        name = f"{i:02d}.png"
        if i == 9:
            (folder / name).write_bytes(b"corrupt")  # a failed row must land the same way
        else:
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    csv = folder / "m.csv"
    lat, lon = rng.uniform(-80, 80, N), rng.uniform(-170, 170, N)
    pd.DataFrame({"image": names, "lat": lat, "lon": lon}).to_csv(csv, index=False)
    return csv


def _manifest(csv: Path) -> Manifest:
    return load_manifest(csv, check_files=True).clean()


KW = {"batch_size": 3, "shard_size": 4, "progress": False, "backbone": {"name": "thumb"}}


def _extract(manifest: Manifest, out: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_features(manifest, _encode, out, **(KW | kw))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# One rank in a fresh interpreter; with a kill point it SIGKILLs itself at that encode call.
_RANK = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_distributed_extract as t
from geoalign.data.feature_store import dist_env
at = int(sys.argv[3])
calls = [0]
real = t._encode
def encode(images):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(images)
t._encode = encode
rank, world = dist_env()
src = Path(sys.argv[1])
if src.is_dir():  # a folder of webdataset shards
    from geoalign.data.wds import list_shards
    source = list_shards(src)
else:
    source = t._manifest(src)
t._extract(source, Path(sys.argv[2]), rank=rank, world_size=world)
print("encode calls", calls[0])
"""


def _ranks(csv: Path, out: Path, world: int, kill_at: dict[int, int] | None = None) -> list:
    """Run `world` ranks as concurrent processes (RANK/WORLD_SIZE set, as a launcher does)."""
    kill_at = kill_at or {}
    procs = []
    for rank in range(world):
        env = os.environ | {"RANK": str(rank), "WORLD_SIZE": str(world), "PYTHONPATH": str(SRC)}
        script = _RANK.format(tests=str(HERE))
        args = [sys.executable, "-c", script, str(csv), str(out), str(kill_at.get(rank, 0))]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True))
    return [(p.wait(timeout=120), p.stdout.read()) for p in procs]


def test_two_processes_merge_to_the_single_process_bytes(tmp_path: Path) -> None:
    csv = _photos(tmp_path / "imgs")
    single = tmp_path / "single"
    _extract(_manifest(csv), single)
    out = tmp_path / "dist"
    results = _ranks(csv, out, 2)
    assert [rc for rc, _ in results] == [0, 0]
    held = {r: FeatureStoreIndex(part_dir(out, r)) for r in (0, 1)}
    assert held[0] == [0, 2, 4] and held[1] == [1, 3, 5]  # disjoint, every other shard
    store = merge_parts(out)
    assert not (out / "parts").exists()
    assert _files(out) == _files(single)  # index, features, metadata: byte for byte
    assert len(store) == N - 1 and store.failures["image"].tolist() == ["09.png"]


def test_two_processes_from_shards_merge_to_the_single_process_bytes(tmp_path: Path) -> None:
    """The same from webdataset shards (the field's format), fast: no launcher, no gloo."""
    from geoalign.data.wds import list_shards, write_shards

    csv = _photos(tmp_path / "imgs")
    write_shards(_manifest(csv), tmp_path / "wds", shard_size=5)
    single = tmp_path / "single"
    _extract(list_shards(tmp_path / "wds"), single)
    out = tmp_path / "dist"
    results = _ranks(tmp_path / "wds", out, 2)
    assert [rc for rc, _ in results] == [0, 0], results
    held = {r: FeatureStoreIndex(part_dir(out, r)) for r in (0, 1)}
    assert held[0] and held[1] and not set(held[0]) & set(held[1])  # disjoint parts
    merge_parts(out)
    assert _files(out) == _files(single)


def FeatureStoreIndex(folder: Path) -> list[int]:  # noqa: N802 - reads like a type in asserts
    import json

    return [e["shard"] for e in json.loads((folder / "index.json").read_text())["shards"]]


def test_a_killed_rank_resumes_and_the_merge_is_still_identical(tmp_path: Path) -> None:
    csv = _photos(tmp_path / "imgs")
    single = tmp_path / "single"
    _extract(_manifest(csv), single)
    out = tmp_path / "dist"
    # rank 1 dies in its 4th batch: its shard 1 (2 batches) is whole, shard 3 is not
    results = _ranks(csv, out, 2, kill_at={1: 4})
    assert results[0][0] == 0 and results[1][0] == -signal.SIGKILL
    assert FeatureStoreIndex(part_dir(out, 1)) == [1]
    with pytest.raises(DataError, match=r"shards \[3, 5\] of 6 are in no part"):
        merge_parts(out)
    results = _ranks(csv, out, 2)  # the rerun: rank 0 has nothing left, rank 1 resumes
    assert results[0] == (0, "encode calls 0\n")
    assert results[1] == (0, "encode calls 3\n")  # shards 3 (2 batches) and 5 (1 batch) only
    merge_parts(out)
    assert _files(out) == _files(single)


def test_another_world_size_keeps_the_shards_parts_hold(tmp_path: Path) -> None:
    csv = _photos(tmp_path / "imgs")
    manifest = _manifest(csv)
    out = tmp_path / "dist"
    assert _extract(manifest, out, rank=0, world_size=2) is None  # shards 0, 2, 4
    for rank in range(3):  # relaunched on 3 processes: only shards 1, 3, 5 are left
        _extract(manifest, out, rank=rank, world_size=3)
    assert FeatureStoreIndex(part_dir(out, 1)) == [1]  # 1 % 3 == 1; 4 was already in part 0
    assert FeatureStoreIndex(part_dir(out, 2)) == [5]
    assert FeatureStoreIndex(part_dir(out, 0)) == [0, 2, 3, 4]
    single = tmp_path / "single"
    _extract(manifest, single)
    merge_parts(out)
    assert _files(out) == _files(single)


def test_parts_of_different_runs_are_not_merged(tmp_path: Path) -> None:
    csv = _photos(tmp_path / "imgs")
    out = tmp_path / "dist"
    _extract(_manifest(csv), out, rank=0, world_size=2)
    _extract(_manifest(csv), out, rank=1, world_size=2, dtype="float32")
    with pytest.raises(DataError, match="dtype='float32'.*cannot be merged"):
        merge_parts(out)
    with pytest.raises(DataError, match="no parts to merge"):
        merge_parts(tmp_path / "nothing")


_TORCHRUN_MAIN = """
import sys
sys.path.insert(0, {tests!r})
import torch
import geoalign.nn.backbones as backbones
from test_wds import _tiny_backbone
backbones.load_backbone = lambda spec, device: _tiny_backbone()
from geoalign.cli import main
main()
"""


@pytest.mark.slow  # ~30 s on 2 loaded cores: torchrun's start-up, the gloo group, two CLIs
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_cli_extracts_from_shards_and_rank0_merges(tmp_path: Path) -> None:
    from geoalign.data.wds import list_shards, write_shards
    from test_wds import _tiny_backbone

    csv = _photos(tmp_path / "imgs")
    write_shards(_manifest(csv), tmp_path / "wds", shard_size=5)
    script = tmp_path / "run_cli.py"
    script.write_text(_TORCHRUN_MAIN.format(tests=str(HERE)))
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "feats"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)]
    cmd += ["features", "extract", str(tmp_path / "wds"), "--out", str(out), "--shard-size", "4"]
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "feature store" in proc.stdout + proc.stderr
    store = FeatureStore(out)
    assert store.complete and len(store) == N - 1 and not (out / "parts").exists()
    from geoalign.data.feature_store import encode_with

    single = tmp_path / "single"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_features(
            list_shards(tmp_path / "wds"),
            encode_with(_tiny_backbone()),
            single,
            shard_size=4,
            batch_size=64,
            progress=False,
            backbone={"spec": "clip-vit-l14", "embed_dim": 24},
        )
    assert _files(out) == _files(single)


def test_cli_ranks_without_a_launcher_then_features_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    import geoalign.nn.backbones as backbones
    from geoalign.cli.features import register
    from test_wds import _tiny_backbone

    monkeypatch.setattr(backbones, "load_backbone", lambda spec, device: _tiny_backbone())
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    csv = _photos(tmp_path / "imgs")
    app = typer.Typer()
    register(app)
    out = tmp_path / "feats"
    args = ["features", "extract", str(csv), "--out", str(out), "--shard-size", "4"]
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert f"rank {rank}: part done" in res.output and "features merge" in res.output
    res = CliRunner().invoke(app, ["features", "merge", str(tmp_path / "elsewhere")])
    assert res.exit_code != 0 and "no parts to merge" in res.output
    res = CliRunner().invoke(app, ["features", "merge", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{N - 1} rows of dim 24" in res.output
    assert FeatureStore(out).complete
