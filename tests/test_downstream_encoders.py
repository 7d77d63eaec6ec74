"""Encoders behind the downstream interface: built-ins, checkpoint folders, callables, the cache."""

import numpy as np
import pytest
import torch

from geoalign.downstream.encoders import (
    CallableEmbedder,
    embed,
    get_encoder,
    untrained_encoder,
)
from geoalign.errors import GeoalignError

LATLON = np.array([[48.85, 2.35], [-33.9, 151.2], [0.0, -179.99], [89.0, 10.0], [-60.0, 0.0]])


def test_geoclip_embedder_matches_zoo_encoder():
    from geoalign.models.registry import load_location_encoder

    emb = get_encoder("geoclip")(LATLON)
    ref = load_location_encoder("geoclip")(torch.tensor(LATLON, dtype=torch.float32)).detach()
    assert emb.shape == (5, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_untrained_shares_rff_but_not_mlp():
    from geoalign.models.registry import load_location_encoder

    official = load_location_encoder("geoclip")
    untrained = untrained_encoder()
    for a, b in zip(untrained.branches, official.branches, strict=True):
        torch.testing.assert_close(a.rff.b, b.rff.b)
        assert not torch.equal(a.head.weight, b.head.weight)
    again = untrained_encoder()  # seeded: the same random MLP every time
    torch.testing.assert_close(again.branches[0].head.weight, untrained.branches[0].head.weight)
    assert get_encoder("untrained")(LATLON).shape == (5, 512)


def test_rff_only_features():
    feats = get_encoder("rff-only")(LATLON)
    assert feats.shape == (5, 1536)
    # Each scale is [cos(φ), sin(φ)] for 256 frequencies: cos² + sin² = 1 per frequency.
    for k in range(3):
        block = feats[:, k * 512 : (k + 1) * 512]
        np.testing.assert_allclose(block[:, :256] ** 2 + block[:, 256:] ** 2, 1.0, atol=1e-5)


def test_raw_latlon_and_callable():
    np.testing.assert_allclose(get_encoder("raw-latlon")(LATLON), LATLON.astype(np.float32))
    wrapped = CallableEmbedder("xyz", lambda ll: torch.as_tensor(ll[:, :1] * 2))
    np.testing.assert_allclose(wrapped(LATLON)[:, 0], LATLON[:, 0] * 2)
    bad = CallableEmbedder("bad", lambda ll: np.zeros(len(ll)))
    with pytest.raises(GeoalignError, match="shape"):
        bad(LATLON)
    nan = CallableEmbedder("nan", lambda ll: np.where(ll[:, [0]] > 80, np.nan, ll))
    with pytest.raises(GeoalignError, match="row 3"):
        nan(LATLON)


def test_checkpoint_folder_plugs_in(tmp_path):
    from geoalign.models.checkpoint import save_checkpoint

    enc = untrained_encoder(seed=5)
    state = {f"location_encoder.{k}": v for k, v in enc.state_dict().items()}
    save_checkpoint(tmp_path / "run", state, {"location_encoder": enc.config.to_dict()})
    emb = get_encoder(str(tmp_path / "run"))
    ref = enc(torch.tensor(LATLON, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(emb(LATLON), ref, rtol=1e-5, atol=1e-6)
    assert emb.name == str(tmp_path / "run") and emb.fingerprint.startswith("checkpoint:")


def test_unknown_encoder():
    with pytest.raises(GeoalignError, match="unknown encoder"):
        get_encoder("no-such-encoder")


def test_embedding_cache(tmp_path):
    calls = []

    def fn(ll):
        calls.append(len(ll))
        return ll * 3

    enc = CallableEmbedder("count", fn, fingerprint="count:v1")
    a = embed(enc, LATLON, tmp_path)
    b = embed(enc, LATLON, tmp_path)
    np.testing.assert_array_equal(a, b)
    assert calls == [5]  # second call read the cache
    embed(enc, LATLON[:3], tmp_path)  # other points: another entry
    embed(CallableEmbedder("count", fn, fingerprint="count:v2"), LATLON, tmp_path)  # other weights
    assert calls == [5, 3, 5]
