"""Training batches: reproducible per epoch, split exactly across processes, resumable, streamed."""

import numpy as np
import pytest
import torch

from geoalign.training.data import ArraySource, EpochLoader, StoreSource, fraction_mask


def _data(n=1000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    feats[:, 0] = np.arange(n)  # row id rides along in the features
    coords = np.stack([rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)], axis=1)
    return feats, coords


@pytest.fixture
def store(tmp_path):
    from geoalign.data.feature_store import store_arrays

    feats, coords = _data()
    return store_arrays(feats, coords, tmp_path / "store", dtype="float32", shard_size=128)


def _ids(batches):
    return [b["features"][:, 0].long().tolist() for b in batches]


@pytest.mark.parametrize("kind", ["array", "store"])
def test_epochs_are_reproducible_and_cover_rows_once(kind, store):
    src = ArraySource(*_data()) if kind == "array" else StoreSource(store, read_rows=200)
    a = _ids(src.iter_local_batches(3, 100, 7, 0, 1, 0))
    b = _ids(src.iter_local_batches(3, 100, 7, 0, 1, 0))
    c = _ids(src.iter_local_batches(4, 100, 7, 0, 1, 0))
    assert a == b and a != c
    flat = sum(a, [])
    assert len(flat) == len(set(flat)) == 1000  # every row once; 1000 = 10 full batches
    coords = next(src.iter_local_batches(3, 100, 7, 0, 1, 0))["coords"]
    assert coords.shape == (100, 2) and coords.dtype == torch.float32


@pytest.mark.parametrize("kind", ["array", "store"])
def test_processes_split_each_global_batch_and_resume_skips(kind, store):
    src = ArraySource(*_data()) if kind == "array" else StoreSource(store, read_rows=200)
    whole = _ids(src.iter_local_batches(0, 100, 1, 0, 1, 0))
    parts = [_ids(src.iter_local_batches(0, 100, 1, r, 4, 0)) for r in range(4)]
    for k, batch in enumerate(whole):
        assert sum((p[k] for p in parts), []) == batch
    assert _ids(src.iter_local_batches(0, 100, 1, 0, 1, 6)) == whole[6:]


def test_fraction_is_a_fixed_uniform_subset():
    m = fraction_mask(10000, 0.2, seed=3)
    assert m.sum() == 2000 and np.array_equal(m, fraction_mask(10000, 0.2, seed=3))
    assert 0.15 < m[:5000].mean() < 0.25
    src = ArraySource(*_data(), fraction=0.5, fraction_seed=1)
    assert src.n_rows == 500
    with pytest.raises(ValueError, match="fraction"):
        fraction_mask(10, 0.0, 0)


def test_store_fraction_yields_only_kept_rows(store):
    src = StoreSource(store, fraction=0.3, fraction_seed=2, read_rows=64)
    kept = set(np.flatnonzero(src.mask).tolist())
    rows = sum(_ids(src.iter_local_batches(0, 50, 0, 0, 1, 0)), [])
    assert len(rows) == src.n_rows // 50 * 50 and set(rows) <= kept


def test_loader_reads_its_position_when_iterated():
    src = ArraySource(*_data())
    loader = EpochLoader(src, 100, 5, position=lambda: (2, 3), rank=1, world=2)
    assert len(loader) == 10
    got = _ids(loader)
    assert len(got) == 7 and got == _ids(src.iter_local_batches(2, 100, 5, 1, 2, 3))
    with pytest.raises(ValueError, match="divisible"):
        EpochLoader(src, 100, 5, position=lambda: (0, 0), world=3)
    with pytest.raises(ValueError, match="lower the batch"):
        EpochLoader(src, 2000, 5, position=lambda: (0, 0))


def test_data_position_skips_only_in_the_epoch_it_counted():
    from geoalign.training.data import DataPosition

    pos = DataPosition()
    assert pos.start(0) == 0
    for _ in range(3):
        pos.step()
    saved = pos.state()
    assert saved == {"epoch": 0, "batches_done": 3}

    mid = DataPosition()  # resumed mid-epoch: the same epoch skips what was done
    mid.restore(saved)
    assert mid.start(0) == 3 and mid.state() == saved
    assert mid.start(1) == 0  # and the next epoch starts from its beginning

    later = DataPosition()  # a checkpoint counted in epoch 0, resumed into epoch 1: no skip
    later.restore(saved)
    assert later.start(1) == 0 and later.state() == {"epoch": 1, "batches_done": 0}
