"""`geoalign locate-text`: text through the model's image head ranks the gallery like a photo."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from geoalign.cli import app
from geoalign.errors import GeoalignError
from test_cli_predict import small_gallery  # noqa: F401  (fixture)

runner = CliRunner()


def test_text_queries_rank_the_gallery(small_gallery):  # noqa: F811
    from geoalign.data.galleries import load_gallery
    from geoalign.inference.locator import Geolocator
    from geoalign.inference.text_queries import text_queries
    from geoalign.nn.text_encoders import load_text_encoder

    texts = ["snowy mountains", "tropical beach"]
    res = runner.invoke(
        app,
        [
            "locate-text",
            *texts,
            "--text-encoder",
            "tiny:768",
            "--gallery",
            str(small_gallery),
            "--json",
            "-",
            "-k",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["source"] for r in records] == texts
    assert all(len(r["predictions"]) == 3 for r in records)
    # the same as ranking the head's image of the text embedding
    geo = Geolocator.from_pretrained(
        "geoclip", backbone=None, gallery=load_gallery(str(small_gallery))
    )
    enc = load_text_encoder("tiny:768", vocabulary=texts)
    with torch.no_grad():
        head = geo.model.image_head(enc.encode(texts).clone())
    direct = geo.rank(torch.nn.functional.normalize(head, dim=-1), top_k=3)
    assert [c.gallery_index for c in direct[0]] == [
        int(p["gallery_index"]) for p in records[0]["predictions"]
    ]
    with pytest.raises(GeoalignError, match="does not share CLIP's image space"):
        text_queries(geo, load_text_encoder("minilm"), texts)
    with pytest.raises(GeoalignError, match="768-d features"):
        text_queries(geo, load_text_encoder("tiny:32", vocabulary=texts), texts)


def test_a_model_without_a_text_tower_is_a_clear_error():
    from geoalign.inference.text_queries import text_encoder_for

    assert text_encoder_for("clip-vit-l14") == "clip-vit-l14"
    assert text_encoder_for("hf:/models/clip") == "hf-clip:/models/clip"
    for spec in ("torchvision:mobilenet_v2", "places365-scene-labels", None):
        with pytest.raises(GeoalignError, match="no CLIP text tower"):
            text_encoder_for(spec)
