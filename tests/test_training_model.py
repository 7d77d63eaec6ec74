"""The GeoCLIP model: GPS noise, the queue (against the geoclip package's), checkpoints."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.geo.distance import haversine_km
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig, GPSQueue, perturb_gps, random_locations
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig


def tiny_config(**kw) -> GeoCLIPConfig:
    return GeoCLIPConfig(
        location_encoder=LocationEncoderConfig(
            n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
        ),
        image_head=ImageHeadConfig(in_dim=12, hidden_dim=24, out_dim=16),
        **{"queue_size": 32, **kw},
    )


@pytest.mark.parametrize("lat", [0.0, 45.0, 70.0])
def test_gps_noise_has_the_requested_size_in_metres(lat):
    n, sigma = 20000, 1000.0
    base = torch.tensor([[lat, 10.0]]).expand(n, 2)
    noisy = perturb_gps(base, sigma, torch.Generator().manual_seed(0)).double().numpy()
    d_m = haversine_km(lat, 10.0, noisy[:, 0], noisy[:, 1]) * 1000
    # 2-D isotropic Gaussian: the distance is Rayleigh, with RMS sigma * sqrt(2)
    assert np.sqrt(np.mean(d_m**2)) == pytest.approx(sigma * np.sqrt(2), rel=0.03)


@settings(max_examples=50, deadline=None)
@given(st.floats(-90, 90), st.floats(-180, 179.999), st.floats(1, 5e6))
def test_gps_noise_stays_on_the_globe(lat, lon, sigma):
    out = perturb_gps(
        torch.tensor([[lat, lon]] * 16, dtype=torch.float64),
        sigma,
        torch.Generator().manual_seed(1),
    )
    assert torch.isfinite(out).all()
    assert (out[:, 0].abs() <= 90).all()
    assert ((out[:, 1] >= -180) & (out[:, 1] < 180)).all()


def test_zero_noise_is_identity():
    x = torch.randn(5, 2)
    assert perturb_gps(x, 0.0) is x


def test_queue_init_distributions():
    g = torch.Generator().manual_seed(0)
    sphere = random_locations(40000, "sphere", g)
    box = random_locations(40000, "latlon", g)
    # area between -30 and 30 degrees is half the sphere, a third of the lat range
    assert (sphere[:, 0].abs() < 30).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (box[:, 0].abs() < 30).float().mean().item() == pytest.approx(1 / 3, abs=0.01)


def test_queue_is_fifo_like_the_geoclip_package():
    """Same sequence of batches into our queue and into geoclip's dequeue_and_enqueue."""
    from geoclip.model.GeoCLIP import GeoCLIP as Reference

    size = 10
    ours = GPSQueue(size)
    ref = SimpleNamespace(
        queue_size=size,
        gps_queue=ours.coords.T.clone(),
        gps_queue_ptr=torch.zeros(1, dtype=torch.long),
    )
    g = torch.Generator().manual_seed(0)
    for n in (3, 4, 6, 2, 10, 13, 1):
        batch = torch.randn(n, 2, generator=g)
        ours.enqueue(batch)
        Reference.dequeue_and_enqueue(ref, batch)
        assert torch.equal(ours.coords, ref.gps_queue.T)
        assert int(ours.ptr) == int(ref.gps_queue_ptr)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GeoCLIP(tiny_config(features="toy-features"))
    model.queue.enqueue(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    model.save(tmp_path / "ckpt", provenance={"note": "test"})
    back = GeoCLIP.load(tmp_path / "ckpt")
    feats, coords = torch.randn(4, 12), torch.tensor([[10.0, 20.0], [-33.0, 151.0]])
    assert torch.allclose(back(feats, coords), model(feats, coords))
    assert torch.equal(back.queue.coords, model.queue.coords)
    assert back.config.features == "toy-features"
    # the lead's zoo loaders read the same folder
    from geoalign.models.registry import load_image_head, load_location_encoder, load_logit_scale

    assert torch.allclose(
        load_location_encoder(tmp_path / "ckpt")(coords), model.encode_locations(coords)
    )
    assert torch.allclose(load_image_head(tmp_path / "ckpt")(feats), model.encode_images(feats))
    assert load_logit_scale(tmp_path / "ckpt").item() == pytest.approx(2.5)


def test_official_weights_load_into_the_model():
    from geoalign.models.registry import load_location_encoder, load_logit_scale

    model = GeoCLIP.from_official(queue_size=8)
    coords = torch.tensor([[48.85, 2.35], [-33.9, 151.2]])
    assert torch.allclose(model.encode_locations(coords), load_location_encoder("geoclip")(coords))
    assert model.logit_scale.item() == pytest.approx(load_logit_scale("geoclip").item())
    assert model.config.image_head.in_dim == 768 and len(model.queue) == 8


def test_scratch_model_temperature_and_bf16():
    model = GeoCLIP(tiny_config(temperature_init=0.07))
    assert model.logit_scale.item() == pytest.approx(np.log(1 / 0.07))
    low = model.to(torch.bfloat16)
    logits = low(torch.randn(3, 12), torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    assert logits.dtype == torch.float32 and logits.shape == (3, 2) and torch.isfinite(logits).all()
