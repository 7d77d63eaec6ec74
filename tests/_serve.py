"""Shared fixtures of the serve tests: a tiny CLIP tower, a small gallery, a loaded engine and a
real uvicorn server on a random loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=768,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory):
    from geoalign.data.galleries import load_gallery

    g = load_gallery("geoclip-100k").sample(2000, random_state=0)
    path = tmp_path_factory.mktemp("gallery") / "g.csv"
    g[["lat", "lon"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def config(tiny_clip, small_gallery):
    from geoalign.serve.config import ServeConfig

    return ServeConfig(backbone=f"hf:{tiny_clip}", gallery=str(small_gallery))


@pytest.fixture(scope="module")
def engine(config):
    from geoalign.serve.engine import Engine

    loaded = Engine.load(config)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def concept_model(tiny_clip, small_gallery, tmp_path_factory):
    """A tiny concept-aware checkpoint that reads the tiny CLIP tower's features (40 concepts,
    random "CLIP" text embeddings), with a country concept bottleneck fitted next to it."""
    import pandas as pd
    import torch

    from geoalign.data.concept_sets import load_concept_set
    from geoalign.interpret.cbm import cbm_dir, fit_country_cbm
    from geoalign.models.concept import ConceptAwareGeoCLIP, ConceptConfig
    from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
    from geoalign.nn.image_head import ImageHeadConfig
    from geoalign.nn.location_encoder import LocationEncoderConfig

    torch.manual_seed(0)
    geoclip = GeoCLIP(
        GeoCLIPConfig(
            location_encoder=LocationEncoderConfig(
                n_frequencies=16, hidden_dim=32, n_hidden=1, embed_dim=16
            ),
            image_head=ImageHeadConfig(in_dim=768, hidden_dim=32, out_dim=16),
            queue_size=32,
            features=f"hf:{tiny_clip}",
        )
    )
    text = torch.randn(40, 768, generator=torch.Generator().manual_seed(1))
    net = ConceptAwareGeoCLIP.from_geoclip(
        geoclip,
        ConceptConfig(k=40, head_hidden=(32,), top_k=6),
        load_concept_set("geography").select(40),
        text,
        text_kind="clip",
    ).eval()
    path = tmp_path_factory.mktemp("concept") / "model"
    net.save(path)
    latlon = pd.read_csv(small_gallery)[["lat", "lon"]].to_numpy()[:600]
    features = np.random.default_rng(0).normal(size=(len(latlon), 768)).astype(np.float32)
    fit_country_cbm(net, features, latlon, target_nonzero=5, min_per_class=15).save(cbm_dir(path))
    return path


@pytest.fixture(scope="module")
def concept_config(concept_model, small_gallery):
    from geoalign.serve.config import ServeConfig

    return ServeConfig(model=str(concept_model), gallery=str(small_gallery))


@pytest.fixture(scope="module")
def concept_engine(concept_config):
    from geoalign.serve.engine import Engine

    loaded = Engine.load(concept_config)
    yield loaded
    loaded.close()


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48), exif=None) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def gps_exif(lat: float, lon: float):
    """An EXIF block with GPS tags for (lat, lon), as cameras write them (DMS rationals)."""
    from PIL.TiffImagePlugin import IFDRational

    def dms(value: float):
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        s = round(((value - d) * 60 - m) * 60 * 100)
        return (IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 100))

    exif = Image.Exif()
    exif[0x8825] = {
        1: "N" if lat >= 0 else "S",
        2: dms(lat),
        3: "E" if lon >= 0 else "W",
        4: dms(lon),
    }
    return exif


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app):
    """uvicorn serving `app` on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
