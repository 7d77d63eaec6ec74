"""POST /v1/explain with a tiny concept-aware model: the record equals `geoalign explain
--json`'s, its options and errors; a model without concepts answers 409 and says so in its card."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serve import (  # noqa: E402
    concept_config,
    concept_engine,
    concept_model,
    config,
    engine,
    jpeg_bytes,
    small_gallery,
    tiny_clip,
)
from geoalign.serve.app import create_app  # noqa: E402

__all__ = [  # fixtures
    "concept_config",
    "concept_engine",
    "concept_model",
    "config",
    "engine",
    "small_gallery",
    "tiny_clip",
]


@pytest.fixture(scope="module")
def client(concept_config, concept_engine):
    with TestClient(create_app(concept_config, concept_engine)) as c:
        yield c


def _explain(client, images, **params):
    files = [("image", (name, data, "image/jpeg")) for name, data in images]
    return client.post("/v1/explain", params=params, files=files)


def test_explain_record_equals_cli_json(client, concept_model, small_gallery, tmp_path):
    """The API's record is the one `geoalign explain PHOTO --json` prints for the same model,
    gallery and photo; the CLI also names the chart it wrote, and `source` is the CLI's path
    but the API's upload name."""
    from typer.testing import CliRunner

    from geoalign.cli import app

    photo = tmp_path / "street.jpg"
    photo.write_bytes(jpeg_bytes(7, (96, 64)))
    args = ["explain", str(photo), "--model", str(concept_model), "--gallery", str(small_gallery)]
    res = CliRunner().invoke(app, [*args, "--json", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (cli_record,) = json.loads(res.stdout)
    api = _explain(client, [("street.jpg", photo.read_bytes())])
    assert api.status_code == 200, api.text
    (api_record,) = api.json()["results"]
    assert cli_record.pop("source") == str(photo) and api_record.pop("source") == "street.jpg"
    assert cli_record.pop("chart").endswith(".png")
    assert api_record == cli_record
    # and it says something: six concepts (the model's top_k), a country with its reasons
    assert api_record["schema"] == "geoalign.explanation/v1"
    assert len(api_record["concept_activations"]) == 6
    assert api_record["country"]["code"] and api_record["concept_contributions"]
    assert len(api_record["location"]) == 5 and api_record["model"] == str(concept_model)


def test_a_calibrated_model_explains_with_predicts_probabilities_in_both(
    concept_model, small_gallery, tmp_path
):
    """A calibration stored in the checkpoint (`geoalign calibrate`) sharpens the location
    probabilities of the explanation, from the CLI and the API alike."""
    import shutil

    from typer.testing import CliRunner

    from geoalign.cli import app
    from geoalign.inference.calibration import Calibration
    from geoalign.serve.config import ServeConfig
    from geoalign.serve.engine import Engine

    model = tmp_path / "calibrated"
    shutil.copytree(concept_model, model)
    meta = json.loads((model / "config.json").read_text())
    meta["calibration"] = Calibration(scale=40.0, fitted_on="test").to_dict()
    (model / "config.json").write_text(json.dumps(meta))
    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(8))
    args = ["explain", str(photo), "--model", str(model), "--gallery", str(small_gallery)]
    res = CliRunner().invoke(app, [*args, "--json", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (cli_record,) = json.loads(res.stdout)
    served = Engine.load(ServeConfig(model=str(model), gallery=str(small_gallery)))
    try:
        with TestClient(create_app(served.config, served)) as c:
            (api_record,) = _explain(c, [("p.jpg", photo.read_bytes())]).json()["results"]
    finally:
        served.close()
    cli_record.pop("chart")
    assert {**api_record, "source": ""} == {**cli_record, "source": ""}
    res = CliRunner().invoke(app, [*args[:3], str(concept_model), *args[4:], "--json",
                                   "--out", str(tmp_path / "plain")])  # fmt: skip
    (plain,) = json.loads(res.stdout)
    assert api_record["location"][0]["prob"] > 2 * plain["location"][0]["prob"]


def test_explain_options_several_images_and_errors(client):
    images = [("a.jpg", jpeg_bytes(1)), ("bad.jpg", b"not an image"), ("b.jpg", jpeg_bytes(2))]
    res = _explain(client, images, top_k=3)
    assert res.status_code == 200, res.text
    a, bad, b = res.json()["results"]
    assert [a["source"], bad["source"], b["source"]] == ["a.jpg", "bad.jpg", "b.jpg"]
    assert "not a recognised image format" in bad["error"]
    assert len(a["concept_activations"]) == 3 and len(b["concept_activations"]) == 3
    scores = [c["activation"] for c in a["concept_activations"]]
    assert scores == sorted(scores, reverse=True)
    for value, words in (("0", "between 1 and 40"), ("41", "between 1 and 40"), ("x", "whole")):
        err = _explain(client, [("a.jpg", jpeg_bytes(1))], top_k=value)
        assert err.status_code == 422 and err.json()["error"]["field"] == "top_k"
        assert words in err.json()["error"]["message"]
    only_bad = _explain(client, [("bad.jpg", b"garbage")])
    assert only_bad.status_code == 422 and "bad.jpg" in only_bad.json()["error"]["message"]


def test_explain_is_bounded_by_the_queue_limit(concept_config, concept_engine):
    from geoalign.serve.config import ServeConfig

    tight = ServeConfig(**{**concept_config.__dict__, "max_queue": 1})
    with TestClient(create_app(tight, concept_engine)) as c:
        res = _explain(c, [("a.jpg", jpeg_bytes(1)), ("b.jpg", jpeg_bytes(2))])
        assert res.status_code == 503 and res.headers["retry-after"] == "1"
        assert "queue full" in res.json()["error"]["message"]
        assert _explain(c, [("a.jpg", jpeg_bytes(1))]).status_code == 200  # one image fits


def test_a_bottleneck_for_other_concepts_fails_the_start_up(concept_model, tmp_path):
    import shutil

    from geoalign.errors import DataError
    from geoalign.serve.engine import Explainer

    model = tmp_path / "model"
    shutil.copytree(concept_model, model)
    meta = model / "cbm" / "cbm.json"
    record = json.loads(meta.read_text())
    net_names = list(record["concepts"])
    record["concepts"] = net_names[::-1]
    meta.write_text(json.dumps(record))
    assert Explainer.load(str(concept_model), net_names).cbm is not None
    with pytest.raises(DataError, match="another concept list.*fit-cbm"):
        Explainer.load(str(model), net_names)


def test_card_and_docs_describe_explain(client):
    card = client.get("/v1/models").json()["models"][0]
    assert card["method"] == "concept" and card["explain"] is True
    assert card["concepts"] == {"count": 40, "top_k": 6, "country_bottleneck": True}
    assert client.get("/page-config.json").json()["explain"] is True
    doc = client.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    props = doc["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(props) == {"image", "top_k"} and "409" in doc["responses"]


def test_a_model_without_concepts_answers_409_and_its_card_says_so(config, engine):
    with TestClient(create_app(config, engine)) as c:
        card = c.get("/v1/models").json()["models"][0]
        assert card["explain"] is False and card["concepts"] is None
        assert c.get("/page-config.json").json()["explain"] is False
        res = _explain(c, [("a.jpg", jpeg_bytes(1))])
        assert res.status_code == 409, res.text
        error = res.json()["error"]
        assert error["field"] == "model" and "no concept scores" in error["message"]
        assert "concept-aware model" in error["message"] and "Traceback" not in res.text
