"""Segmentation store: a torn index is rebuilt from the shards of the same images; `segment
extract` checks --workers and --device before loading anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.manifest import Manifest
from geoalign.data.segmentation_store import extract_segmentations
from geoalign.data.transforms import clip_config

N = 7


def _segment(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A deterministic stand-in segmenter: label = mean intensity bucket of each pixel."""
    return (batch.float().mean(dim=1) // 32).to(torch.uint8)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    rng = np.random.default_rng(0)
    names = [f"{i}.png" for i in range(N)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    frame = pd.DataFrame({"image": names, "lat": np.arange(N) * 1.0, "lon": np.arange(N) * 2.0})
    return Manifest.from_frame(frame, image_root=tmp_path, source=tmp_path / "m.csv")


def _run(manifest: Manifest, out: Path, calls: list[int] | None = None):
    def segment(batch, size):
        if calls is not None:
            calls.append(len(batch))
        return _segment(batch, size)

    return extract_segmentations(
        manifest, segment, out, preprocess=clip_config(image_size=24), batch_size=2,
        shard_size=3, progress=False,
    )  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_torn_index_is_rebuilt_and_other_images_are_redone(manifest: Manifest, tmp_path: Path):
    out = tmp_path / "segs"
    _run(manifest, out)
    reference = _files(out)
    (out / "index.json").write_text('{"format": "geoalign-seg')
    calls: list[int] = []
    with pytest.warns(UserWarning, match="rebuilt it from 3 whole shard"):
        _run(manifest, out, calls)
    assert calls == [] and _files(out) == reference  # nothing segmented again

    renamed = Manifest.from_frame(
        manifest.frame.assign(image=["5.png", "6.png"] + manifest.frame["image"].tolist()[2:]),
        image_root=manifest.image_root,
        source=manifest.source,
    )
    (out / "index.json").write_text("")
    with pytest.warns(UserWarning, match="rebuilt"):
        store = _run(renamed, out, calls)
    assert sum(calls) == 3  # shard 0 held other images: redone; shards 1 and 2 kept
    assert store.check_manifest(renamed) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "-1"], "--workers"),
        pytest.param(
            ["--device", "cuda:0"],
            "--device cuda:0: no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a CUDA GPU"),
        ),
    ],
)
def test_segment_extract_checks_options_first(tmp_path: Path, extra: list[str], message: str):
    res = CliRunner().invoke(
        app, ["segment", "extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s"), *extra]
    )
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_segment_info_prints_the_summary_on_stdout(manifest: Manifest, tmp_path: Path):
    out = tmp_path / "segs"
    _run(manifest, out)
    res = CliRunner().invoke(app, ["segment", "info", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert "rows: 7" in lines and "shards: 3" in lines and "complete: True" in lines


@pytest.mark.parametrize("command", [["segment", "extract"], ["features", "import", "f.npy"]])
def test_store_out_that_is_a_file_is_refused(tmp_path: Path, command: list[str]):
    afile = tmp_path / "m.csv"
    afile.write_text("image,lat,lon\n")
    res = CliRunner().invoke(app, [*command, str(afile), "--out", str(afile)])
    assert res.exit_code == 2 and "is a file; give a folder" in " ".join(res.output.split())
