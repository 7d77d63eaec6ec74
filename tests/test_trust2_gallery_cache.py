"""A damaged gallery cache (truncated, NaN-filled, wrong shape or dtype) is detected on read and
rebuilt with a warning, never a traceback or NaN probabilities; a failed write leaves nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from geoalign.inference import gallery_cache
from geoalign.nn.location_encoder import LocationEncoder, LocationEncoderConfig


@pytest.fixture()
def encoder() -> LocationEncoder:
    torch.manual_seed(0)
    cfg = LocationEncoderConfig(n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8)
    return LocationEncoder(cfg).eval()


@pytest.fixture()
def latlon() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.column_stack([rng.uniform(-80, 80, 40), rng.uniform(-179, 179, 40)])


def _fresh(encoder, latlon) -> torch.Tensor:
    with torch.no_grad():
        return gallery_embeddings(encoder, latlon, cache=False)


def gallery_embeddings(encoder, latlon, **kw) -> torch.Tensor:
    with torch.no_grad():
        return gallery_cache.gallery_embeddings(encoder, latlon, **kw)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(b"not a numpy file at all" * 10)


def _nan(path):
    arr = np.load(path)
    arr[3, 2] = np.nan
    np.save(path, arr)


def _inf(path):
    arr = np.load(path)
    arr[0] = np.inf
    np.save(path, arr)


def _rows(path):
    np.save(path, np.load(path)[:-1])


def _cols(path):
    np.save(path, np.load(path)[:, :-1])


def _one_d(path):
    np.save(path, np.load(path).ravel())


def _float64(path):
    np.save(path, np.load(path).astype(np.float64))


DAMAGE = [_truncate, _empty, _garbage, _nan, _inf, _rows, _cols, _one_d, _float64]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__.strip("_") for d in DAMAGE])
def test_a_damaged_cache_is_rebuilt_with_a_warning(encoder, latlon, damage):
    first = gallery_embeddings(encoder, latlon)
    path = gallery_cache.cached_gallery_path(encoder, latlon)
    assert path.is_file()
    damage(path)
    with pytest.warns(UserWarning, match=r"gallery cache .* is damaged .*: rebuilding it") as rec:
        again = gallery_embeddings(encoder, latlon)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert torch.isfinite(again).all() and torch.allclose(again, first)
    # the rebuilt file is sound: the next read is silent and takes no encoder call
    arr, why = gallery_cache.read_cached(path, len(latlon), encoder.embed_dim)
    assert why is None and np.array_equal(arr, first.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(gallery_embeddings(encoder, latlon), first)


def test_a_sound_cache_is_read_without_encoding(encoder, latlon, monkeypatch):
    first = gallery_embeddings(encoder, latlon)
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: pytest.fail("re-encoded"))
    assert torch.equal(gallery_embeddings(encoder, latlon), first)


def test_the_cache_is_feature_major_and_a_row_order_file_is_rewritten(encoder, latlon, monkeypatch):
    from geoalign.models.base import is_feature_major

    first = gallery_embeddings(encoder, latlon)
    path = gallery_cache.cached_gallery_path(encoder, latlon)
    on_disk = np.load(path)
    assert is_feature_major(first) and on_disk.flags.f_contiguous and not on_disk.flags.c_contiguous
    np.save(path, np.ascontiguousarray(on_disk))  # a file written row by row (before)
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: pytest.fail("re-encoded"))
    again = gallery_embeddings(encoder, latlon)
    assert is_feature_major(again) and torch.equal(again, first)
    assert not np.load(path).flags.c_contiguous  # rewritten once, in the layout read without copy
    assert torch.equal(gallery_embeddings(encoder, latlon), first)


def test_a_failed_write_leaves_no_file_and_no_temp(encoder, latlon, monkeypatch):
    path = gallery_cache.cached_gallery_path(encoder, latlon)
    path.unlink(missing_ok=True)

    def half_then_fail(fh, arr):
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(gallery_cache.np, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        gallery_embeddings(encoder, latlon)
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir() if path.stem in p.name] == []


def test_a_geolocator_over_a_nan_cache_gives_finite_probabilities(tmp_path):
    """The end-to-end defect: a NaN-filled cache used to give NaN probabilities and exit 0."""
    from geoalign.inference.locator import Geolocator
    from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
    from geoalign.nn.image_head import ImageHeadConfig

    torch.manual_seed(0)
    model = GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=8, hidden_dim=16, n_hidden=1, embed_dim=8
            ),
            image_head=ImageHeadConfig(in_dim=12, hidden_dim=16, out_dim=8),
            queue_size=8,
        )
    )
    model.save(tmp_path / "ckpt")
    rng = np.random.default_rng(3)
    gallery = pd.DataFrame({"lat": rng.uniform(-60, 60, 30), "lon": rng.uniform(-170, 170, 30)})

    def locate():
        geo = Geolocator.from_pretrained(str(tmp_path / "ckpt"), backbone=None, gallery=gallery)
        return geo, geo.predict_features(torch.randn(2, 12, generator=torch.Generator()), top_k=3)

    geo, _ = locate()
    path = gallery_cache.cached_gallery_path(geo.model.location_encoder, geo._latlon)
    arr = np.load(path)
    arr[:] = np.nan
    np.save(path, arr)
    with pytest.warns(UserWarning, match="is damaged"):
        _, preds = locate()
    probs = [c.prob for cands in preds for c in cands]
    assert len(probs) == 6 and np.isfinite(probs).all()
