"""Feature store: exact round trips, crash-and-resume gives identical bytes, streaming, imports."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from geoalign.cli.features import register
from geoalign.data.feature_store import (
    FeatureDataset,
    FeatureIterableDataset,
    FeatureStore,
    FeatureStoreWriter,
    encode_with,
    extract_features,
    import_features,
    store_arrays,
)
from geoalign.data.manifest import Manifest
from geoalign.errors import CoordinateError, DataError

N_IMAGES = 30
BROKEN = {7: "corrupt", 19: "missing"}  # 0-based positions of images that cannot be loaded


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def _encode(images: list[np.ndarray]) -> np.ndarray:
    """Deterministic features from pixels: a 2x2 average-pooled thumbnail (12 values)."""
    out = [img.reshape(2, 4, 2, 4, 3).mean(axis=(1, 3)).reshape(-1) / 255.0 for img in images]
    return np.stack(out)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = []
    for i in range(N_IMAGES):
        name = f"{i:03d}.png"
        names.append(name)
        if BROKEN.get(i) == "corrupt":
            (folder / name).write_bytes(b"not an image")
        elif BROKEN.get(i) != "missing":
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name)
    frame = pd.DataFrame(
        {
            "image": names,
            "lat": rng.uniform(-89, 89, N_IMAGES),
            "lon": rng.uniform(-179, 179, N_IMAGES),
        }
    )
    return Manifest.from_frame(frame, image_root=folder, source=tmp_path / "m.csv")


def _extract(manifest: Manifest, out: Path, encode=_encode, **kw) -> FeatureStore:
    kw = {"batch_size": 3, "shard_size": 8, "progress": False, "backbone": {"name": "thumb"}} | kw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract_features(manifest, encode, out, load_fn=_load, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_extract_records_failures_and_stores_exact_features(
    manifest: Manifest, tmp_path: Path
) -> None:
    store = _extract(manifest, tmp_path / "store", dtype="float32")
    ok = [i for i in range(N_IMAGES) if i not in BROKEN]
    expected = _encode([_load(manifest.path(i)) for i in ok])
    assert len(store) == len(ok) and store.dim == 12 and store.num_shards == 4
    np.testing.assert_array_equal(store[:], expected.astype(np.float32))
    np.testing.assert_array_equal(store.coords, manifest.coords()[ok])
    assert store.ids.tolist() == [manifest.images[i] for i in ok]
    assert store.positions.tolist() == ok and store.rows.tolist() == [i + 1 for i in ok]
    failures = store.failures
    assert failures["position"].tolist() == sorted(BROKEN)
    assert failures["row"].tolist() == [i + 1 for i in sorted(BROKEN)]
    assert (
        "No such file" in failures.iloc[1]["error"] or "FileNotFound" in failures.iloc[1]["error"]
    )
    assert store.n_failed == 2 and store.complete
    assert store.backbone == {"name": "thumb"} and store.manifest_hash == manifest.content_hash()
    store.check_compatible(manifest, {"name": "thumb"})
    with pytest.raises(DataError, match="different manifest"):
        store.check_compatible(manifest.subset(np.arange(5)))
    with pytest.raises(DataError, match="backbone"):
        store.check_compatible(backbone={"name": "other"})
    store.verify()


def test_indexing_matches_a_plain_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 7)).astype(np.float32)
    coords = np.c_[rng.uniform(-90, 90, 1000), rng.uniform(-180, 180, 1000)]
    store = store_arrays(x, coords, tmp_path / "s", shard_size=64)
    assert store.dtype == "float32" and store.num_shards == 16
    assert isinstance(store._shard_features(0), np.memmap)
    np.testing.assert_array_equal(store[3], x[3])
    np.testing.assert_array_equal(store[-1], x[-1])
    for key in (slice(None), slice(60, 200), slice(5, 900, 7), slice(990, None), slice(10, 5)):
        np.testing.assert_array_equal(store[key], x[key])
    idx = np.array([999, 0, 64, 63, 500, 500, -2])
    np.testing.assert_array_equal(store[idx], x[idx])
    np.testing.assert_array_equal(store[[[1, 2], [3, 900]]], x[[[1, 2], [3, 900]]])
    mask = rng.random(1000) < 0.3
    np.testing.assert_array_equal(store[mask], x[mask])
    np.testing.assert_array_equal(store[5:9, 2], x[5:9, 2])
    np.testing.assert_array_equal(np.asarray(store.features), x)
    assert store.features.shape == (1000, 7)
    for bad in (1000, -1001):
        with pytest.raises(IndexError):
            store[bad]
    with pytest.raises(IndexError):
        store[[0, 1000]]
    np.testing.assert_array_equal(store.coords, coords)
    half = store_arrays(x, coords, tmp_path / "h", dtype="float16", shard_size=100)
    np.testing.assert_array_equal(half[:], x.astype(np.float16))


# A real SIGKILL at a chosen moment: the extraction runs in a fresh interpreter (this module's
# _extract, _encode and _load) with one function wrapped to kill its own process. No cleanup or
# exception handler runs, exactly as with `kill -9`; only the timing is fixed, so the test is
# deterministic. atomic_write calls, in order: index (on open), then per shard: features, metadata,
# index.
_KILLER = """
import io, os, pickle, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_feature_store as t
import geoalign.data.shards as shards

mode, at = sys.argv[3], int(sys.argv[4])
calls = {{"encode": 0, "write": 0}}
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def encode(images):
    calls["encode"] += 1
    if mode == "encode" and calls["encode"] == at:
        die()
    return t._encode(images)
real_write = shards.atomic_write
def write(path, fn, **kw):
    calls["write"] += 1
    if mode == "write" and calls["write"] == at:
        def half(fh):  # half the bytes reach the temp file, then the kill
            buf = io.BytesIO()
            fn(buf)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            die()
        return real_write(path, half, **kw)
    return real_write(path, fn, **kw)
shards.atomic_write = write
with open(sys.argv[1], "rb") as fh:
    manifest = pickle.load(fh)
t._extract(manifest, Path(sys.argv[2]), encode=encode)
"""


def _extract_killed(manifest: Manifest, out: Path, mode: str, at: int) -> None:
    """Run _extract in a subprocess that SIGKILLs itself at encode call / file write `at`."""
    pickled = out.parent / f"{out.name}-manifest.pkl"
    pickled.write_bytes(pickle.dumps(manifest))
    script = _KILLER.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(pickled), str(out), mode, str(at)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_killed_mid_shard_then_resumed_is_byte_identical(
    manifest: Manifest, tmp_path: Path
) -> None:
    reference = tmp_path / "uninterrupted"
    _extract(manifest, reference)
    out = tmp_path / "resumed"
    _extract_killed(manifest, out, "encode", 5)  # shard 0 takes 3 batches; die inside shard 1
    index = json.loads((out / "index.json").read_text())
    assert [e["shard"] for e in index["shards"]] == [0] and not index["complete"]
    assert not (out / "shard-00001.npy").exists()
    with pytest.warns(UserWarning, match="incomplete"):
        partial = FeatureStore(out)
    assert len(partial) == 7  # shard 0 without the corrupt image 7

    calls = {"n": 0}

    def counting(images: list[np.ndarray]) -> np.ndarray:
        calls["n"] += 1
        return _encode(images)

    _extract(manifest, out, encode=counting)
    assert calls["n"] == 8  # only shards 1..3 were encoded (3 + 3 + 2 batches)
    assert _files(out) == _files(reference)


@pytest.mark.parametrize(
    ("at", "listed"),
    [
        (9, [0, 1]),  # half-way through shard 2's metadata: its features file already in place
        (4, []),  # half-way through the first index rewrite: the old index stays whole
    ],
)
def test_killed_while_writing_files_leaves_a_consistent_store(
    manifest: Manifest, tmp_path: Path, at: int, listed: list[int]
) -> None:
    reference = tmp_path / "ref"
    _extract(manifest, reference)
    out = tmp_path / "out"
    _extract_killed(manifest, out, "write", at)
    index = json.loads((out / "index.json").read_text())  # always whole: never torn by a kill
    assert [e["shard"] for e in index["shards"]] == listed and not index["complete"]
    assert [p for p in out.iterdir() if ".tmp-" in p.name]  # the dead writer's temp file
    _extract(manifest, out)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # temp files removed
    assert _files(out) == _files(reference)


def test_torn_index_is_rebuilt_from_the_shards_on_the_next_run(
    manifest: Manifest, tmp_path: Path
) -> None:
    """A truncated index.json used to be reported and refused; the next run now rebuilds it."""
    out = tmp_path / "s"
    _extract(manifest, out)
    reference = _files(out)
    text = (out / "index.json").read_text()
    (out / "index.json").write_text(text[: len(text) // 3])
    (out / "shard-00002.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(DataError, match="corrupt index.*rerun the extraction"):
        FeatureStore(out)
    calls = {"n": 0}

    def counting(images: list[np.ndarray]) -> np.ndarray:
        calls["n"] += 1
        return _encode(images)

    _extract(manifest, out, encode=counting)
    assert calls["n"] == 3  # only shard 2 (3 batches) was encoded again
    assert _files(out) == reference

    # shards from other images (the index that named their manifest is gone) are redone
    moved = Manifest.from_frame(
        manifest.frame.assign(lat=manifest.frame["lat"] + 1e-6),
        image_root=manifest.image_root,
        source=manifest.source,
    )
    (out / "index.json").write_text("{")
    calls["n"] = 0
    store = _extract(moved, out, encode=counting)
    assert calls["n"] == 11 and store.manifest_hash == moved.content_hash()
    np.testing.assert_array_equal(store.coords, moved.coords()[store.positions])


def test_truncated_shard_is_detected_and_redone(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "s"
    _extract(manifest, out)
    good = _files(out)
    shard = out / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="shard-00001"):
        FeatureStore(out).verify()
    with pytest.raises(DataError, match="shard-00001"):
        FeatureStore(out)[10]
    _extract(manifest, out)
    assert _files(out) == good


def test_settings_mismatch_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "s"
    _extract(manifest, out)
    moved = Manifest.from_frame(
        manifest.frame.assign(lat=manifest.frame["lat"] + 1e-6), image_root=manifest.image_root
    )
    with pytest.raises(DataError, match="manifest_hash"):
        _extract(moved, out)
    with pytest.raises(DataError, match="dtype"):
        _extract(manifest, out, dtype="float32")
    with pytest.raises(DataError, match="backbone"):
        _extract(manifest, out, backbone={"name": "other"})
    store = _extract(moved, out, overwrite=True)
    assert store.manifest_hash == moved.content_hash()
    bad = Manifest.from_frame(pd.DataFrame({"image": ["a"], "lat": [95.0], "lon": [0.0]}))
    with pytest.raises(DataError, match="invalid coordinates"):
        _extract(bad, tmp_path / "bad")


def test_iter_batches_streams_every_row_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1003, 5)).astype(np.float32)
    coords = np.c_[rng.uniform(-90, 90, 1003), rng.uniform(-180, 180, 1003)]
    store = store_arrays(x, coords, tmp_path / "s", shard_size=100)
    plain = list(store.iter_batches(128))
    assert [len(b["index"]) for b in plain] == [128] * 7 + [107]
    assert np.concatenate([b["index"] for b in plain]).tolist() == list(range(1003))
    shuffled = list(store.iter_batches(128, shuffle=True, seed=3, buffer_shards=3))
    order = np.concatenate([b["index"] for b in shuffled])
    assert sorted(order.tolist()) == list(range(1003)) and order.tolist() != list(range(1003))
    for b in shuffled:
        np.testing.assert_array_equal(b["features"], x[b["index"]])
        np.testing.assert_array_equal(b["coords"], coords[b["index"]])
    again = np.concatenate(
        [b["index"] for b in store.iter_batches(128, shuffle=True, seed=3, buffer_shards=3)]
    )
    np.testing.assert_array_equal(order, again)
    dropped = list(store.iter_batches(128, shuffle=True, drop_last=True))
    assert all(len(b["index"]) == 128 for b in dropped) and len(dropped) == 7


def test_torch_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 4)).astype(np.float16)
    coords = np.c_[rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)]
    store = store_arrays(x, coords, tmp_path / "s", shard_size=32)
    ds = FeatureDataset(store)
    item = ds[17]
    assert item["features"].dtype == torch.float32
    torch.testing.assert_close(item["features"], torch.from_numpy(x[17].astype(np.float32)))
    torch.testing.assert_close(item["coords"], torch.tensor(coords[17], dtype=torch.float32))
    iterable = FeatureIterableDataset(store, 50, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(iterable, batch_size=None, num_workers=2)
    seen = np.concatenate([b["index"].numpy() for b in loader])
    assert sorted(seen.tolist()) == list(range(300))
    ranks = [
        np.concatenate(
            [b["index"].numpy() for b in FeatureIterableDataset(store, 64, rank=r, world_size=2)]
        )
        for r in (0, 1)
    ]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 300
    iterable.set_epoch(1)
    first_epoch1 = next(iter(iterable))["index"]
    iterable.set_epoch(0)
    assert not torch.equal(first_epoch1, next(iter(iterable))["index"])


def test_import_features_from_npy_and_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "feats.npy", x)
    coords = pd.DataFrame(
        {
            "IMG_ID": [f"{i}.jpg" for i in range(50)],
            "LAT": rng.uniform(-90, 90, 50),
            "LON": rng.uniform(-180, 180, 50),
        }
    )
    coords.to_csv(tmp_path / "coords.csv", index=False)
    store = import_features(
        tmp_path / "feats.npy",
        tmp_path / "coords.csv",
        tmp_path / "s",
        shard_size=16,
        backbone="clip-vit-l14",
    )
    np.testing.assert_array_equal(store[:], x)
    np.testing.assert_allclose(store.coords, coords[["LAT", "LON"]].to_numpy())
    assert store.ids.tolist() == coords["IMG_ID"].tolist() and store.backbone == "clip-vit-l14"
    coords[["LAT", "LON"]].to_csv(tmp_path / "only.csv", index=False)  # no id column
    assert (
        import_features(tmp_path / "feats.npy", tmp_path / "only.csv", tmp_path / "s2").ids[3]
        == "3"
    )
    coords.iloc[:49].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="50 rows but there are 49"):
        import_features(tmp_path / "feats.npy", tmp_path / "short.csv", tmp_path / "s3")
    coords.assign(LAT=coords["LAT"].where(coords.index != 12, 123.0)).to_csv(
        tmp_path / "bad.csv", index=False
    )
    with pytest.raises(DataError, match="row 13: latitude 123.0"):
        import_features(tmp_path / "feats.npy", tmp_path / "bad.csv", tmp_path / "s4")
    with pytest.raises(CoordinateError):
        store_arrays(x, np.full((50, 2), np.nan), tmp_path / "s5")
    x[3, 1] = 1e6  # overflows float16
    with pytest.raises(DataError, match="row 3"):
        store_arrays(x, coords[["LAT", "LON"]].to_numpy(), tmp_path / "s6", dtype="float16")


def test_writer_add_is_resumable_and_finalize_checks_coverage(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    c = np.zeros((20, 2))
    w = FeatureStoreWriter(tmp_path / "w", 2, "float32", shard_size=8, total=20)
    w.add(x[:10], c[:10])
    assert w.done_shards == {0}
    with pytest.raises(DataError, match="cover 10 of 20"):
        w.finalize()  # flushes rows 8..9 as shard 1, but 10 rows are still missing
    w = FeatureStoreWriter(tmp_path / "w2", 2, "float32", shard_size=8)
    w.add(x[:10], c[:10])
    w.add(x[10:], c[10:])
    store = w.finalize()
    np.testing.assert_array_equal(store[:], x)


def test_encode_with_module_transform(manifest: Manifest, tmp_path: Path) -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(192, 4)
            self.transform = lambda img: torch.from_numpy(img).permute(2, 0, 1) / 255.0

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.proj(pixels.flatten(1))

    torch.manual_seed(0)
    model = Tiny().eval()
    store = _extract(manifest, tmp_path / "s", encode=encode_with(model), dtype="float32")
    img = _load(manifest.path(0))
    with torch.no_grad():
        want = model(model.transform(img)[None]).numpy()[0]
    np.testing.assert_allclose(store[0], want, rtol=1e-6, atol=1e-6)
    half = _extract(manifest, tmp_path / "bf16", encode=encode_with(model.to(torch.bfloat16)))
    assert half.dtype == "float16"
    np.testing.assert_allclose(half[0].astype(np.float32), want, rtol=0.05, atol=0.05)


def test_cli_import_and_info(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    x = np.ones((10, 3), dtype=np.float16)
    np.save(tmp_path / "f.npy", x)
    pd.DataFrame({"lat": np.linspace(-10, 10, 10), "lon": np.linspace(0, 90, 10)}).to_csv(
        tmp_path / "c.csv", index=False
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "features",
            "import",
            str(tmp_path / "f.npy"),
            str(tmp_path / "c.csv"),
            "--out",
            str(tmp_path / "s"),
            "--shard-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["features", "info", str(tmp_path / "s"), "--json", "--verify"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["rows"], info["dim"], info["dtype"], info["shards"]) == (10, 3, "float16", 3)
    result = runner.invoke(app, ["features", "info", str(tmp_path / "s")])
    assert result.exit_code == 0 and "float16" in result.stdout  # the table is the result
    result = runner.invoke(app, ["features", "info", str(tmp_path)])
    assert result.exit_code == 2 and "not a feature store" in " ".join(result.output.split())
