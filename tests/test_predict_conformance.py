"""Given the same backbone features, our top-k equals the geoclip package's GeoCLIP.predict."""

import numpy as np
import pytest
import torch
from PIL import Image

from geoalign.data.galleries import load_gallery
from geoalign.inference.locator import Geolocator
from geoalign.models.registry import load_model

geoclip_image_encoder = pytest.importorskip("geoclip.model.image_encoder")


class _FixedFeatures(torch.nn.Module):
    """Stands in for CLIPModel: returns preset projected image features."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def get_image_features(self, pixel_values):
        return self.features


def _official(n_gallery: int | None) -> Geolocator:
    gallery = load_gallery("geoclip-100k")
    return Geolocator(
        load_model("geoclip"), gallery=gallery if n_gallery is None else gallery.iloc[:n_gallery]
    )


@pytest.fixture(scope="module")
def official_geolocator():
    return _official(5_000)


def _compare_with_official(ours_geolocator, tmp_path, monkeypatch):
    from geoclip import GeoCLIP

    features = torch.randn(1, 768) * 0.5
    monkeypatch.setattr(geoclip_image_encoder, "CLIPModel", lambda config: _FixedFeatures(features))
    ref = GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()
    ref.gps_gallery = torch.tensor(ours_geolocator._latlon, dtype=torch.float32)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    ref_gps, ref_prob = ref.predict(str(image), top_k=5)

    ours = ours_geolocator.predict_features(features, top_k=5, min_separation_km=0)[0]
    got_gps = np.array([[c.lat, c.lon] for c in ours])
    got_prob = np.array([c.prob for c in ours])
    np.testing.assert_allclose(got_gps, ref_gps.numpy(), atol=1e-4)  # gallery is float32 there
    np.testing.assert_allclose(got_prob, ref_prob.numpy(), rtol=1e-4, atol=1e-7)


def test_topk_equals_official_predict_gallery_subset(official_geolocator, tmp_path, monkeypatch):
    _compare_with_official(official_geolocator, tmp_path, monkeypatch)


@pytest.mark.slow
def test_topk_equals_official_predict_full_100k(tmp_path, monkeypatch):
    _compare_with_official(_official(None), tmp_path, monkeypatch)


def test_gallery_embeddings_cached(official_geolocator, monkeypatch):
    from geoalign.inference import gallery_cache

    path = gallery_cache.cached_gallery_path(
        official_geolocator.model.location_encoder, official_geolocator._latlon
    )
    assert path.is_file()
    calls = []
    monkeypatch.setattr(
        official_geolocator.model.location_encoder, "encode", lambda *a, **k: calls.append(1)
    )
    again = gallery_cache.gallery_embeddings(
        official_geolocator.model.location_encoder, official_geolocator._latlon
    )
    assert calls == [] and again.shape == (5_000, 512)
