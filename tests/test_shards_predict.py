"""`geoalign predict` from webdataset shards: keys name the records, the predictions equal those
of the same photos as loose files, bad samples are reported (exit 1), JSONL resume works, and a
shard is read forward once with only the wanted samples decoded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.data.manifest import load_manifest
from geoalign.data.wds import write_shards
from test_cli_predict import small_gallery, tiny_clip  # noqa: F401  (fixtures)

runner = CliRunner()
N = 7


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(photo folder, shard folder of 4 shards, sample key -> photo path); photo 3 is broken."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(N):
        name = f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    (folder / "p3.jpg").write_bytes(b"not an image at all")
    frame = pd.DataFrame({"image": names, "lat": rng.uniform(-60, 60, N), "lon": np.zeros(N)})
    frame.to_csv(folder / "manifest.csv", index=False)
    manifest = load_manifest(folder / "manifest.csv", check_files=True).clean()
    write_shards(manifest, tmp_path / "wds", shard_size=2)
    keys = {f"{i + 1:09d}": str(folder / name) for i, name in enumerate(names)}
    return folder, tmp_path / "wds", keys


def _args(tiny_clip, small_gallery, *extra):  # noqa: F811
    return ["predict", "--backbone", f"hf:{tiny_clip}", "--gallery", str(small_gallery), *extra]


def _records(path: Path) -> dict[str, dict]:
    return {r["source"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_predict_from_shards_equals_loose_files(tiny_clip, small_gallery, shards, tmp_path):  # noqa: F811
    folder, wds, keys = shards
    loose_out, shard_out = tmp_path / "loose.jsonl", tmp_path / "shards.jsonl"
    loose = runner.invoke(
        app, _args(tiny_clip, small_gallery, str(folder), "--json", str(loose_out))
    )
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(wds), "--json", str(shard_out)))
    assert loose.exit_code == 1 and res.exit_code == 1, res.output  # p3 is broken: partial failure
    assert "1 of 7 inputs could not be read" in res.stderr
    by_file, by_key = _records(loose_out), _records(shard_out)
    assert set(by_key) == set(keys)  # every sample's key is its record's source
    bad = by_key["000000004"]
    assert "undecodable image" in bad["error"] and "000001.tar" in bad["error"]
    for key, path in keys.items():
        if key == "000000004":
            continue
        want, got = by_file[path], by_key[key]
        assert set(got) == set(want)  # the same record schema
        assert [p["gallery_index"] for p in got["predictions"]] == [
            p["gallery_index"] for p in want["predictions"]
        ]
        np.testing.assert_allclose(
            [p["prob"] for p in got["predictions"]],
            [p["prob"] for p in want["predictions"]],
            rtol=1e-5,
        )


def test_brace_patterns_single_tars_and_workers_give_the_same_records(
    tiny_clip,  # noqa: F811
    small_gallery,  # noqa: F811
    shards,
    tmp_path,
):
    _, wds, keys = shards
    runs = {
        "folder": [str(wds)],
        "braces": [str(wds / "{000000..000003}.tar")],
        "tars": [
            str(wds / "000000.tar"),
            str(wds / "000001.tar"),
            str(wds / "{000002,000003}.tar"),
        ],
        "workers": [str(wds), "--workers", "2", "--batch-size", "2"],
    }
    found = {}
    for name, inputs in runs.items():
        out = tmp_path / f"{name}.jsonl"
        res = runner.invoke(
            app, _args(tiny_clip, small_gallery, *inputs, "-k", "2", "--json", str(out))
        )
        assert res.exit_code == 1, (name, res.output)
        found[name] = {k: r.get("predictions", r.get("error")) for k, r in _records(out).items()}
        assert set(found[name]) == set(keys), name
    for name in runs:
        for key, value in found["folder"].items():
            if isinstance(value, str):
                assert found[name][key] == value
            else:
                got = found[name][key]
                assert [p["gallery_index"] for p in got] == [p["gallery_index"] for p in value]


def test_resume_from_shards_skips_done_samples_and_retries_failed(
    tiny_clip,  # noqa: F811
    small_gallery,  # noqa: F811
    shards,
    tmp_path,
):
    _, wds, keys = shards
    reference, resumed = tmp_path / "reference.jsonl", tmp_path / "resumed.jsonl"
    args = _args(tiny_clip, small_gallery, "-k", "2", "--batch-size", "1", "--quiet")
    assert runner.invoke(app, [*args, str(wds), "--json", str(reference)]).exit_code == 1
    first = runner.invoke(app, [*args, str(wds / "000000.tar"), "--json", str(resumed)])
    assert first.exit_code == 0, first.output
    assert set(_records(resumed)) == {"000000001", "000000002"}
    res = runner.invoke(app, [*args[:-1], str(wds), "--json", str(resumed)])
    assert res.exit_code == 1
    assert "resuming: 2 inputs already in" in res.stderr
    assert _records(resumed) == _records(reference)
    again = runner.invoke(app, [*args[:-1], str(wds), "--json", str(resumed)])
    assert "resuming: 6 inputs" in again.stderr and "retrying 1 inputs" in again.stderr
    assert _records(resumed) == _records(reference)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_samples_without_image_or_with_a_repeated_key_are_reported(
    tiny_clip,  # noqa: F811
    small_gallery,  # noqa: F811
    tmp_path,
):
    a = _tar(tmp_path / "a.tar", [("x.png", _png(0)), ("x.json", b"{}"), ("y.json", b"{}")])
    b = _tar(tmp_path / "b.tar", [("x.png", _png(1)), ("z.png", _png(2))])  # no json: fine
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(a), str(b), "--json", str(out)))
    assert res.exit_code == 1
    records = _records(out)
    assert set(records) == {"x", "y", "z", f"{b}#x"}
    assert "predictions" in records["x"] and "predictions" in records["z"]
    assert "no image member" in records["y"]["error"] and "a.tar" in records["y"]["error"]
    assert "duplicate key" in records[f"{b}#x"]["error"]
    assert "2 of 4 inputs could not be read" in res.stderr


def test_a_missing_shard_is_a_one_line_usage_error(tiny_clip, small_gallery, shards):  # noqa: F811
    _, wds, _ = shards
    res = runner.invoke(app, _args(tiny_clip, small_gallery, str(wds / "{000000..000009}.tar")))
    assert res.exit_code == 2
    assert "000004.tar: shard not found" in res.output and "Traceback" not in res.output


def test_a_shard_is_read_once_and_only_wanted_samples_are_read(shards, monkeypatch):
    """Seeking over unwanted members: skipped samples' bytes are never read, and the result
    equals streaming the whole shard through webdataset."""
    from geoalign.data import wds_images

    _, wds, _ = shards
    url = str(wds / "000000.tar")
    seek = dict(wds_images.read_samples(url, {1}))
    stream = dict(wds_images._stream_samples(url, {1}))
    assert list(seek) == [1] and seek[1]["jpg"] == stream[1]["jpg"]
    assert seek[1]["__key__"] == "000000002"
    reads = []
    real = tarfile.TarFile.extractfile

    def counting(self, member):
        reads.append(member.name)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", counting)
    dict(wds_images.read_samples(url, {1}))
    assert sorted(reads) == ["000000002.jpg", "000000002.json"]


def test_python_api_predicts_shards_by_key(tiny_clip, small_gallery, shards):  # noqa: F811
    from geoalign import Geolocator
    from geoalign.data.galleries import load_gallery
    from geoalign.data.wds_images import list_photos

    _, wds, keys = shards
    g = Geolocator.from_pretrained(backbone=f"hf:{tiny_clip}", gallery=load_gallery(small_gallery))
    preds = g.predict(list_photos(wds), top_k=2, batch_size=3)
    assert [p.source for p in preds] == sorted(keys)  # shard order, keys as names
    assert [p.ok for p in preds] == [k != "000000004" for k in sorted(keys)]
