"""Every user-visible output (reports, plots, maps, tables) is written all-or-nothing: a writer
that dies midway leaves the previous file intact and no temp file, and the real code paths of
`evaluate` and `predict --map --png` go through `io_atomic` for every file they write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.evaluation.harness import Evaluation, MethodResult
from geoalign.evaluation.report import write_report
from geoalign.io_atomic import atomic_output, remove_stale_temps, temp_path
from test_trust_io_atomic import dead_pid

runner = CliRunner()


# --- the helper ------------------------------------------------------------------------------------


def test_atomic_output_keeps_old_content_and_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "report.csv.gz"
    path.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_output(path) as tmp:
            seen.append(tmp)
            tmp.write_bytes(b"half a new fi")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv.gz"]
    # the temp sits beside the target, hidden, and ends with the target's suffix
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".report.csv.gz")
    assert tmp.suffix == ".gz" and tmp != path


def test_atomic_output_replaces_on_success_and_writers_see_the_suffix(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "table.csv.gz"
    path.write_bytes(b"old")
    with atomic_output(path) as tmp:
        pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False)  # gzip inferred from the suffix
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert pd.read_csv(path)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv.gz"]


def test_atomic_output_removes_a_killed_writers_suffixed_temp(tmp_path: Path) -> None:
    path = tmp_path / "map.png"
    dead = dead_pid()
    stale = tmp_path / f".map.png.tmp-{dead}.png"
    live = tmp_path / f".map.png.tmp-{os.getppid()}.png"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    remove_stale_temps(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    assert temp_path(path, keep_suffix=True).name == f".map.png.tmp-{os.getpid()}.png"


# --- an interrupted evaluation report ---------------------------------------------------------------


def _evaluation(seed: int) -> Evaluation:
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(-60, 60, 30), rng.uniform(-170, 170, 30)], 1)
    pred = truth + rng.normal(0, 5, truth.shape)
    base = truth + rng.normal(0, 20, truth.shape)
    return Evaluation(
        benchmark="toy",
        ids=np.arange(30),
        truth=truth,
        gallery="toy",
        gallery_size=30,
        results=[
            MethodResult.from_predictions("model (top-1)", "model", pred, truth, mode="top1"),
            MethodResult.from_predictions("1-NN", "baseline", base, truth),
        ],
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_report_write_leaves_the_previous_report_intact(tmp_path, monkeypatch):
    import pandas as pd
    from matplotlib.figure import Figure

    out = tmp_path / "eval"
    write_report(_evaluation(0), out)
    before = _snapshot(out)
    assert {"report.md", "report.json", "predictions.csv", "errors_hist.png"} <= set(before)

    real_to_csv = pd.DataFrame.to_csv

    def dies_midway(self, path_or_buf=None, *args, **kwargs):
        text = real_to_csv(self, None, *args, **kwargs)
        Path(path_or_buf).write_text(text[: len(text) // 2])  # half the rows reach the disk
        raise OSError("killed while writing predictions.csv")

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_midway)
    with pytest.raises(OSError, match="killed"):
        write_report(_evaluation(1), out)
    after = _snapshot(out)
    assert set(after) == set(before)  # no temp file left behind
    assert after["predictions.csv"] == before["predictions.csv"]
    json.loads(after["report.json"])  # written before the failure: whole, old or new
    monkeypatch.undo()

    def plot_dies(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        raise OSError("killed while drawing")

    monkeypatch.setattr(Figure, "savefig", plot_dies)
    with pytest.raises(OSError, match="killed"):
        write_report(_evaluation(2), out)
    final = _snapshot(out)
    assert set(final) == set(before)
    assert final["errors_hist.png"] == before["errors_hist.png"]


# --- the real code paths write through io_atomic ----------------------------------------------------


@pytest.fixture
def renames(monkeypatch) -> list[Path]:
    """Destinations of every os.replace made while the test runs (io_atomic's final step)."""
    done: list[Path] = []
    real = os.replace

    def recording(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        done.append(Path(dst).resolve())

    monkeypatch.setattr(os, "replace", recording)
    return done


def _files(folder: Path) -> set[Path]:
    return {p.resolve() for p in folder.rglob("*") if p.is_file()}


def test_every_evaluate_output_is_written_through_a_rename(tmp_path, renames):
    from tests.test_evaluation_cli import _tiny_scene_model

    ckpt = _tiny_scene_model(tmp_path / "model")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(ckpt), "--benchmark", "im2gps", "--gallery", "train:50"]
    args += ["--train", "scene-labels:im2gps", "--prior-radius-km", "2500", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    written = _files(out)
    assert {p.name for p in written} >= {
        "report.md",
        "report.json",
        "predictions.csv",
        "errors_hist.png",
        "errors_map.png",
    }
    assert written <= set(renames), sorted(p.name for p in written - set(renames))


def test_predict_maps_are_written_through_a_rename(tmp_path, renames):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = tmp_path / "tiny-clip"
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=768,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(clip)
    gallery = tmp_path / "g.csv"
    rng = np.random.default_rng(0)
    gallery.write_text(
        "lat,lon\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in rng.uniform(-50, 50, (200, 2)))
    )
    photo = tmp_path / "p.jpg"
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    maps = [out / "m.html", out / "m.png", out / "p.csv", out / "p.geojson"]
    args = ["predict", "--backbone", f"hf:{clip}", "--gallery", str(gallery), str(photo)]
    args += ["--map", str(maps[0]), "--png", str(maps[1])]
    args += ["--csv", str(maps[2]), "--geojson", str(maps[3])]
    renames.clear()  # the tiny model's own save above is not what is checked
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _files(out) == {p.resolve() for p in maps}
    assert {p.resolve() for p in maps} <= set(renames)
