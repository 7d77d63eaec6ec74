"""Webdataset shards: write from a manifest, read back (paths, braces, folders, pipes), bad
samples reported by key, and `features extract` from shards equal to extracting from files."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from PIL import Image
from transformers import CLIPVisionConfig
from typer.testing import CliRunner

from geoalign.data.feature_store import FeatureStore, encode_with, extract_features
from geoalign.data.images import load_image
from geoalign.data.manifest import load_manifest
from geoalign.data.wds import (
    WdsReader,
    expand_shards,
    is_shard_spec,
    list_shards,
    sample_coords,
    write_shards,
)
from geoalign.errors import DataError
from geoalign.nn.backbones import ClipBackbone

N = 11


def _photos(folder: Path, n: int = N) -> Path:
    """n small photos (png and jpg mixed) and a manifest.csv naming them."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"p{i:02d}.{'jpg' if i % 2 else 'png'}"
        pixels = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
        names.append(name)
    frame = pd.DataFrame(
        {"image": names, "lat": rng.uniform(-80, 80, n), "lon": rng.uniform(-170, 170, n)}
    )
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def test_written_shards_read_back_exactly(tmp_path: Path) -> None:
    manifest = load_manifest(_photos(tmp_path / "imgs"), check_files=True).clean()
    result = write_shards(manifest, tmp_path / "wds", shard_size=4)
    assert [p.name for p in result.shards] == ["000000.tar", "000001.tar", "000002.tar"]
    reader = WdsReader(str(tmp_path / "wds" / "{000000..000002}.tar"))
    samples = list(reader)
    assert reader.bad == [] and reader.n_ok == N
    coords = manifest.coords()
    for i, s in enumerate(samples):
        assert s.key == f"{i + 1:09d}"
        assert (s.lat, s.lon) == (coords[i, 0], coords[i, 1])
        expected = np.asarray(load_image(manifest.path(i)))
        assert np.array_equal(np.asarray(s.image), expected)
    # a folder, a list and a pipe: URL name the same samples
    for spec in (tmp_path / "wds", [str(p) for p in result.shards]):
        assert [s.key for s in WdsReader(spec)] == [s.key for s in samples]
    piped = WdsReader(f"pipe:cat {result.shards[1]}")
    assert [s.key for s in piped] == [s.key for s in samples[4:8]]
    # ranks take disjoint shards that together cover all
    halves = [[s.key for s in WdsReader(tmp_path / "wds", rank=r, world_size=2)] for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == [s.key for s in samples]
    assert not set(halves[0]) & set(halves[1])


def test_write_is_resumable_and_refuses_other_settings(tmp_path: Path) -> None:
    manifest = load_manifest(_photos(tmp_path / "imgs"), check_files=True).clean()
    out = tmp_path / "wds"
    first = write_shards(manifest, out, shard_size=4)
    before = {p.name: p.read_bytes() for p in first.shards}
    (out / "000001.tar").unlink()
    (out / ".000001.tar.tmp-999999").write_bytes(b"half a shard")  # a killed writer's leftover
    again = write_shards(manifest, out, shard_size=4)
    assert (again.written, again.kept) == (1, 2)
    assert {p.name: p.read_bytes() for p in again.shards} == before
    assert expand_shards(out) == [str(p) for p in first.shards]  # temp files are not shards
    with pytest.raises(DataError, match="shard_size=4"):
        write_shards(manifest, out, shard_size=5)


def test_bad_samples_are_reported_with_key_and_reason(tmp_path: Path) -> None:
    shard = _tar(
        tmp_path / "mixed.tar",
        {
            "a.jpg": _jpeg(1),
            "a.json": json.dumps({"latitude": 10.5, "longitude": -20.0}).encode(),
            "b.jpg": b"not a jpeg at all",
            "b.json": b'{"lat": 1, "lon": 2}',
            "c.jpg": _jpeg(2),
            "c.json": b'{"name": "no coordinates here"}',
            "d.png": b"",
            "d.txt": b"5,6",
            "e.webp": _jpeg(3),  # content sniffed, whatever the suffix
            "e.txt": b"95 10",
            "f.json": b'{"LAT": 3, "LON": 4}',
            "g.jpeg": _jpeg(4),
            "g.json": b'{"LAT": "45.5", "LON": "7.25"}',
        },
    )
    reader = WdsReader(shard)
    ok = list(reader)
    assert [(s.key, s.lat, s.lon) for s in ok] == [("a", 10.5, -20.0), ("g", 45.5, 7.25)]
    reasons = {b.key: b.reason for b in reader.bad}
    assert set(reasons) == {"b", "c", "d", "e", "f"}
    assert "undecodable" in reasons["b"] and "empty" in reasons["d"]
    assert "no lat/lon" in reasons["c"] and "out of range" in reasons["e"]
    assert "no image" in reasons["f"]
    assert "5 bad" in reader.report() and "mixed.tar: sample 'b'" in reader.report()
    # the listing (no image decoding) leaves out the coordinate/image-less ones, by key
    listing = list_shards(shard, cache_dir=tmp_path / "cache")
    assert [r.key for r in listing.refs] == ["a", "b", "d", "g"]
    assert {b.key for b in listing.bad} == {"c", "e", "f"}
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = list_shards(shard, cache_dir=tmp_path / "cache")  # from the cache
    assert again.refs == listing.refs and again.content_hash() == listing.content_hash()


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"json": b'{"Latitude": -1.5, "Longitude": 2}'}, (-1.5, 2.0)),
        ({"json": b'{"lat": 1, "lng": 179.5}'}, (1.0, 179.5)),
        ({"txt": b"  12.5 -3\n"}, (12.5, -3.0)),
        ({"txt": b"1 270"}, (1.0, -90.0)),  # a 0-360 longitude, wrapped as in a manifest
    ],
)
def test_coordinate_field_names(sample: dict, expected: tuple[float, float]) -> None:
    assert sample_coords(sample) == expected


@pytest.mark.parametrize("txt", [b"95 10", b"1 400", b"nan 3", b"1 inf"])
def test_coordinates_follow_the_manifest_rule(txt: bytes) -> None:
    from geoalign.geo.coords import coordinate_errors

    lat, lon = txt.split()
    (why,) = coordinate_errors([lat.decode()], [lon.decode()]).values()
    with pytest.raises(ValueError, match="out of range") as err:
        sample_coords({"txt": txt})
    assert why in str(err.value)


def test_shard_specs_are_recognised_and_missing_ones_named(tmp_path: Path) -> None:
    assert is_shard_spec("x/{000000..000003}.tar") and is_shard_spec("pipe:curl -s u")
    assert is_shard_spec("https://host/a.tar") and not is_shard_spec("manifest.csv")
    _tar(tmp_path / "000000.tar", {"a.txt": b"1,2"})
    with pytest.raises(DataError, match=r"000001\.tar: shard not found"):
        expand_shards(str(tmp_path / "{000000..000001}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        expand_shards(tmp_path / "empty")


def _tiny_backbone() -> ClipBackbone:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=24,
    )
    return ClipBackbone.from_config(config)


def test_extract_from_shards_equals_extract_from_files(tmp_path: Path) -> None:
    csv = _photos(tmp_path / "imgs")
    manifest = load_manifest(csv, check_files=True).clean()
    write_shards(manifest, tmp_path / "wds", shard_size=4)
    backbone = _tiny_backbone()
    encode = encode_with(backbone)
    kw = {"batch_size": 3, "shard_size": 5, "progress": False, "dtype": "float32"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_files = extract_features(manifest, encode, tmp_path / "f", **kw)
        listing = list_shards(str(tmp_path / "wds" / "{000000..000002}.tar"))
        from_shards = extract_features(listing, encode, tmp_path / "s", num_workers=2, **kw)
    assert from_files is not None and from_shards is not None
    a, b = np.asarray(from_files.features), np.asarray(from_shards.features)
    assert a.shape == (N, 24) and a.tobytes() == b.tobytes()
    assert np.array_equal(from_files.coords, from_shards.coords)
    assert list(from_shards.ids) == [f"{i:09d}" for i in range(1, N + 1)]


def _app() -> typer.Typer:
    from geoalign.cli.data import register as register_data
    from geoalign.cli.features import register as register_features

    app = typer.Typer()
    register_data(app)
    register_features(app)
    return app


def test_cli_to_wds_then_extract_from_a_brace_pattern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = _photos(tmp_path / "imgs")
    runner = CliRunner()
    out = tmp_path / "wds"
    res = runner.invoke(
        _app(), ["data", "to-wds", str(csv), "--out", str(out), "--shard-size", "6"]
    )
    assert res.exit_code == 0, res.output
    assert "2 shards, 11 samples (2 shards written, 0 kept" in res.output
    # one undecodable sample in an extra shard: reported by key, a failed row of the store
    _tar(
        tmp_path / "wds" / "000002.tar",
        {"zz.jpg": b"garbage", "zz.json": b'{"lat": 1, "lon": 2}', "yy.txt": b"1,2"},
    )
    import geoalign.nn.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda spec, device: _tiny_backbone())
    store_dir = tmp_path / "feats"
    res = runner.invoke(
        _app(),
        ["features", "extract", str(out / "{000000..000002}.tar"), "--out", str(store_dir)],
    )
    assert res.exit_code == 0, res.output
    assert "1 bad sample(s) left out" in res.output and "'yy'" in res.output
    assert "bad-samples.csv" in res.output
    bad = pd.read_csv(store_dir / "bad-samples.csv")
    assert bad["key"].tolist() == ["yy"]
    store = FeatureStore(store_dir)
    assert len(store) == N and store.n_failed == 1
    assert store.failures["image"].tolist() == ["zz"]
    # a missing image file: the row is skipped, named, and the exit code says so
    (tmp_path / "imgs" / "p03.jpg").unlink()
    res = runner.invoke(
        _app(),
        ["data", "to-wds", str(csv), "--out", str(tmp_path / "w2"), "--skip-bad-rows"],
    )
    assert res.exit_code == 1, res.output
    assert "10 samples" in res.output
