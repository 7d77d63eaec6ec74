"""`geoalign features extract` on a tiny random CLIP: option checks, the shard-size default, a
settings hint that names only real options, a torn index, and a real SIGKILL mid-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.cli.features import CPU_SHARD_SIZE, extract_cmd
from test_trust_kill import geoalign

runner = CliRunner()
N_IMAGES = 10


def _text(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random CLIP small enough to encode a few 32 px images in milliseconds."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    layer = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    text = dict(layer, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
    vision = dict(layer, image_size=32, patch_size=16, projection_dim=24)
    torch.manual_seed(1)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    ).save_pretrained(folder)
    processor = {
        "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 32},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "do_center_crop": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return f"hf:{folder}"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    names = [f"imgs/{i}.png" for i in range(N_IMAGES)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    path = tmp_path / "m.csv"
    frame = {
        "image": names,
        "lat": rng.uniform(-60, 60, N_IMAGES),
        "lon": rng.uniform(-90, 90, N_IMAGES),
    }
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard-size", "0"], "--shard-size"),
        (["--workers", "-1"], "--workers"),
        (["--batch-size", "0"], "--batch-size"),
        (["--dtype", "int8"], "--dtype must be float16 or float32"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a CUDA GPU"),
        ),
    ],
)
def test_bad_options_are_usage_errors_naming_the_option(
    manifest: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "store"
    res = runner.invoke(app, ["features", "extract", str(manifest), "--out", str(out), *extra])
    assert res.exit_code == 2 and message in _text(res), res.output
    assert not out.exists()


def test_default_shard_size_is_minutes_of_cpu_work_and_resume_keeps_the_stores(
    manifest: Path, tmp_path: Path, tiny_clip: str
) -> None:
    out = tmp_path / "store"
    args = ["features", "extract", str(manifest), "--out", str(out), "--backbone", tiny_clip]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "index.json").read_text())["shard_size"] == CPU_SHARD_SIZE < 16384
    small = tmp_path / "small"
    res = runner.invoke(app, [*args[:4], str(small), *args[5:], "--shard-size", "3"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args[:4], str(small), *args[5:]])  # no --shard-size: keeps 3
    assert res.exit_code == 0, res.output
    assert json.loads((small / "index.json").read_text())["shard_size"] == 3


def test_settings_hint_names_only_options_extract_has(
    manifest: Path, tmp_path: Path, tiny_clip: str
) -> None:
    out = tmp_path / "store"
    args = ["features", "extract", str(manifest), "--out", str(out), "--backbone", tiny_clip]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--dtype", "float32"])
    text = _text(res)
    assert res.exit_code == 2 and "dtype='float16'" in text, res.output
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text))
    known = {opt for p in _params() for opt in p}
    assert named and named <= known, named - known
    res = runner.invoke(app, [*args, "--dtype", "float32", "--overwrite"])
    assert res.exit_code == 0 and json.loads((out / "index.json").read_text())["dtype"] == "float32"


def _params() -> list[list[str]]:
    import typer.main

    command = typer.main.get_command_from_info(
        typer.models.CommandInfo(callback=extract_cmd),
        pretty_exceptions_short=True,
        rich_markup_mode=None,
    )
    return [p.opts for p in command.params]


def test_torn_index_is_repaired_by_the_next_run(
    manifest: Path, tmp_path: Path, tiny_clip: str
) -> None:
    out = tmp_path / "store"
    args = ["features", "extract", str(manifest), "--out", str(out), "--backbone", tiny_clip]
    assert runner.invoke(app, [*args, "--shard-size", "4"]).exit_code == 0
    reference = _files(out)
    (out / "index.json").write_bytes((out / "index.json").read_bytes()[:100])
    res = runner.invoke(app, args)  # the torn index no longer says the size: read from shards
    assert res.exit_code == 0, res.output
    assert "rebuilt it from 3 whole shard" in _text(res)
    assert _files(out) == reference


# Run in one fresh CLI process: first an uninterrupted extraction (the reference), then the same
# extraction into another folder, SIGKILLed half-way through writing shard 1's metadata
# (atomic_write calls: index on open, then features, metadata, index per shard).
_REFERENCE_THEN_KILL_IN_SHARD_1 = """
import io, os, signal, sys
import geoalign.data.shards as shards
from geoalign.cli import app
reference = sys.argv.pop()  # the last argument; the rest end in --out <killed store>
app(args=sys.argv[1:-2] + ["--out", reference], standalone_mode=False)
_real, _calls = shards.atomic_write, [0]
def _write(path, fn, **kw):
    _calls[0] += 1
    if _calls[0] != 6:
        return _real(path, fn, **kw)
    def half(fh):
        buf = io.BytesIO()
        fn(buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(path, half, **kw)
shards.atomic_write = _write
"""


def test_sigkill_mid_run_then_rerun_is_byte_identical(
    manifest: Path, tmp_path: Path, tiny_clip: str
) -> None:
    reference, out = tmp_path / "uninterrupted", tmp_path / "killed"
    args = [
        "features", "extract", str(manifest), "--backbone", tiny_clip,
        "--shard-size", "4", "--batch-size", "2",
    ]  # fmt: skip
    killed = geoalign([*args, "--out", str(out), str(reference)], _REFERENCE_THEN_KILL_IN_SHARD_1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert json.loads((reference / "index.json").read_text())["complete"]
    assert [e["shard"] for e in json.loads((out / "index.json").read_text())["shards"]] == [0]
    resumed = geoalign([*args, "--out", str(out)])  # a fresh process resumes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _files(out) == _files(reference)


def test_out_that_is_a_file_is_refused(manifest: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["features", "extract", str(manifest), "--out", str(manifest)])
    assert res.exit_code == 2 and "is a file; give a folder" in _text(res)
