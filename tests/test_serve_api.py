"""`geoalign serve`'s API with a tiny random CLIP tower: the record equals the CLI's, options,
errors that name their field, limits, the API key, probes and metrics."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serve import (  # noqa: E402
    config,
    engine,
    gps_exif,
    jpeg_bytes,
    small_gallery,
    tiny_clip,
)
from geoalign.serve.app import create_app  # noqa: E402
from geoalign.serve.config import ServeConfig  # noqa: E402

__all__ = ["config", "engine", "small_gallery", "tiny_clip"]  # fixtures


@pytest.fixture(scope="module")
def client(config, engine):
    with TestClient(create_app(config, engine)) as c:
        yield c


def _post(client, path="/v1/predict", images=None, **params):
    images = images if images is not None else [("p.jpg", jpeg_bytes())]
    files = [("image", (name, data, "image/jpeg")) for name, data in images]
    return client.post(path, params=params, files=files)


def test_record_equals_cli_json(client, tiny_clip, small_gallery, tmp_path):
    """The API's record is the CLI's `--json -` line for the same model and photo; only
    `source` differs (the CLI names the path it read, the API the uploaded file name)."""
    from typer.testing import CliRunner

    from geoalign.cli import app

    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(3))
    args = ["predict", "--backbone", f"hf:{tiny_clip}", "--gallery", str(small_gallery)]
    res = CliRunner().invoke(app, [*args, str(photo), "-k", "4", "--json", "-"])
    assert res.exit_code == 0, res.output
    cli_record = json.loads(res.stdout.strip())
    api = _post(client, images=[("p.jpg", photo.read_bytes())], top_k=4)
    assert api.status_code == 200, api.text
    api_record = api.json()["results"][0]
    assert cli_record.pop("source") == str(photo) and api_record.pop("source") == "p.jpg"
    assert api_record == cli_record


def test_several_images_estimate_regions_geojson_and_prior(client):
    images = [("a.jpg", jpeg_bytes(1)), ("b.jpg", jpeg_bytes(2)), ("bad.jpg", b"not an image")]
    res = _post(client, images=images, top_k=3, estimate="mean", regions="0.5,0.9", geojson="true")
    assert res.status_code == 200, res.text
    body = res.json()
    a, b, bad = body["results"]
    assert [a["source"], b["source"], bad["source"]] == ["a.jpg", "b.jpg", "bad.jpg"]
    assert "not a recognised image format" in bad["error"]
    for record in (a, b):
        assert record["schema"] == "geoalign.prediction/v1" and len(record["predictions"]) == 3
        assert record["estimate"]["kind"] == "mean"
        assert [r["p"] for r in record["regions"]] == [0.5, 0.9]
        assert record["settings"]["regions"] == [0.5, 0.9]
    kinds = [f["properties"]["kind"] for f in body["geojson"][0]["features"]]
    assert kinds == ["estimate", "region", "region"] and body["geojson"][2] is None
    # heatmap=true: the GeoJSON adds the densest cells, densest first
    heat = _post(client, images=images[:1], heatmap="true").json()["geojson"][0]["features"]
    cells = [f for f in heat if f["properties"]["kind"] == "heat"]
    density = [f["properties"]["density_km2"] for f in cells]
    assert 10 <= len(cells) <= 600 and density == sorted(density, reverse=True) and density[-1] > 0
    assert all(f["geometry"]["type"] == "Polygon" for f in cells)
    # a prior restricts every candidate to it
    from geoalign.geo.priors import Country

    fr = _post(client, top_k=5, within="FR").json()["results"][0]
    assert fr["settings"]["prior"] is not None
    assert Country("FR").mask([[p["lat"], p["lon"]] for p in fr["predictions"]]).all()


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"top_k": "0"}, "top_k", "between 1 and"),
        ({"top_k": "abc"}, "top_k", "whole number"),
        ({"estimate": "centroid"}, "estimate", "known: top1"),
        ({"regions": "0.5,1.5"}, "regions", "strictly between 0 and 1"),
        ({"regions": "half"}, "regions", "not a number"),
        ({"within": "Atlantis"}, "within", "Atlantis"),
        ({"near": "48.8,2.3"}, "near", "give both"),
        ({"bbox": "1,2,3"}, "bbox", "bbox"),
        ({"geojson": "maybe"}, "geojson", "true or false"),
    ],
)
def test_bad_option_is_422_naming_the_field(client, params, field, words):
    res = _post(client, **params)
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert error["request_id"] == res.headers["x-request-id"]
    assert "Traceback" not in res.text


def test_bad_bodies_are_4xx_json(client):
    corrupt = _post(client, images=[("broken.jpg", b"\xff\xd8\xff\xe0garbage")])
    assert corrupt.status_code == 422 and corrupt.json()["error"]["field"] == "image"
    assert "broken.jpg" in corrupt.json()["error"]["message"]
    none = client.post("/v1/predict", data={"top_k": "3"}, files={"other": ("x", b"1")})
    assert none.status_code == 422 and "no image" in none.json()["error"]["message"]
    text = client.post("/v1/predict", data={"image": "hello"}, files={"other": ("x", b"1")})
    assert text.status_code == 422 and "file upload" in text.json()["error"]["message"]
    raw = client.post("/v1/predict", content=b"abc", headers={"content-type": "image/jpeg"})
    assert raw.status_code == 415 and raw.json()["error"]["field"] == "Content-Type"
    mangled = client.post(
        "/v1/predict",
        content=b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nab',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert 400 <= mangled.status_code < 500 and "error" in mangled.json()
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and "/docs" in missing.json()["error"]["message"]
    # a claim to verify: none in EXIF and none given
    verify = _post(client, "/v1/verify")
    assert verify.status_code == 422 and verify.json()["error"]["field"] == "claimed"
    assert _post(client, "/v1/verify", claimed="91,0").json()["error"]["field"] == "claimed"
    assert _post(client, "/v1/verify", claimed="1,1", alpha="1").json()["error"]["field"] == "alpha"


def test_verify_reads_exif_gps_from_the_upload(client):
    tagged = jpeg_bytes(4, exif=gps_exif(48.8584, 2.2945))
    res = _post(client, "/v1/verify", images=[("eiffel.jpg", tagged)], alpha="0.1")
    assert res.status_code == 200, res.text
    item = res.json()["results"][0]
    check = item["verification"]
    assert check["claim_source"] == "exif" and check["alpha"] == 0.1
    assert check["claimed_lat"] == pytest.approx(48.8584, abs=1e-3)
    assert check["claimed_lon"] == pytest.approx(2.2945, abs=1e-3)
    assert check["verdict"] in ("consistent", "inconsistent") and 0 <= check["level"] <= 1
    assert item["prediction"]["schema"] == "geoalign.prediction/v1"
    given = _post(client, "/v1/verify", images=[("e.jpg", tagged)], claimed="-33.86,151.21")
    assert given.json()["results"][0]["verification"]["claim_source"] == "given"
    # predict's check_exif: a verdict for the tagged photo, a reason for the untagged one
    both = _post(client, images=[("t.jpg", tagged), ("u.jpg", jpeg_bytes(5))], check_exif="1")
    tagged_check, untagged_check = both.json()["verification"]
    assert tagged_check["claim_source"] == "exif" and "no EXIF GPS" in untagged_check["error"]


def test_upload_exif_is_read_by_the_parser_geoalign_verify_uses(tmp_path):
    """One EXIF GPS parser: an upload's claim and its error messages are `read_exif_gps`'s
    for the same bytes (the CLI's message adds only what to type instead)."""
    from PIL import Image

    from geoalign.errors import DataError
    from geoalign.inference.verify import read_exif_gps
    from geoalign.serve.uploads import decode_upload

    bad_ref = gps_exif(10.5, 20.25)
    bad_ref[0x8825] = {**bad_ref[0x8825], 1: "Q"}
    cases = {"ok": gps_exif(-33.8568, 151.2153), "bad-ref": bad_ref, "none": Image.Exif()}
    for name, exif in cases.items():
        data = jpeg_bytes(6, exif=exif)
        photo = tmp_path / f"{name}.jpg"
        photo.write_bytes(data)
        upload = decode_upload(data, str(photo), lambda image: image, 10**7)
        try:
            expected = read_exif_gps(photo)
        except DataError as err:
            assert upload.exif_gps is None
            assert str(err).startswith(upload.exif_error), (name, upload.exif_error)
        else:
            assert upload.exif_gps == expected and upload.exif_error is None
    assert (
        "GPSLatitudeRef is 'Q'"
        in decode_upload(
            jpeg_bytes(6, exif=bad_ref), "x.jpg", lambda image: image, 10**7
        ).exif_error
    )


def test_upload_and_pixel_limits(config, engine):
    small = ServeConfig(**{**config.__dict__, "max_upload_mb": 0.01, "max_pixels": 100 * 100})
    with TestClient(create_app(small, engine)) as c:
        big = _post(c, images=[("big.jpg", jpeg_bytes(0, (400, 400)))])
        assert big.status_code == 413 and big.json()["error"]["field"] == "image"
        assert "upload limit" in big.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit holds while the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 1024

        streamed = c.post(
            "/v1/predict",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413, streamed.text
        wide = _post(c, images=[("wide.jpg", jpeg_bytes(0, (300, 40)))])
        assert wide.status_code == 413 and "12,000 pixels is above the limit" in wide.text


def test_queue_full_is_503_with_retry_after(config, engine):
    tight = ServeConfig(**{**config.__dict__, "max_queue": 1})
    with TestClient(create_app(tight, engine)) as c:
        res = _post(c, images=[("a.jpg", jpeg_bytes(1)), ("b.jpg", jpeg_bytes(2))])
        assert res.status_code == 503 and res.headers["retry-after"] == "1"
        assert "queue full" in res.json()["error"]["message"]
        assert _post(c).status_code == 200  # one image fits


def test_api_key_request_id_and_logs(config, engine, tmp_path, caplog):
    key = tmp_path / "key.txt"
    key.write_text("s3cret-key-0123456789\n")
    locked = ServeConfig(**{**config.__dict__, "api_key_file": str(key)})
    from geoalign.serve.context import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    with TestClient(create_app(locked, engine)) as c, caplog.at_level(logging.INFO):
        denied = c.get("/v1/models")
        assert denied.status_code == 401 and denied.json()["error"]["field"] == "X-API-Key"
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        ok = c.get(
            "/v1/models", headers={"X-API-Key": "s3cret-key-0123456789", "X-Request-ID": "abc-1"}
        )
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "abc-1"
        assert c.get("/healthz").status_code == 200  # probes need no key
        assert c.get("/page-config.json").json()["api_key_required"] is True
    lines = [r for r in caplog.records if r.name == "geoalign.serve.access"]
    assert any(r.request_id == "abc-1" and "/v1/models -> 200" in r.getMessage() for r in lines)
    short = tmp_path / "short.txt"
    short.write_text("abc")
    from geoalign.errors import GeoalignError

    with pytest.raises(GeoalignError, match="at least 16 characters"):
        create_app(ServeConfig(api_key_file=str(short)))


def test_models_probes_and_metrics(client):
    card = client.get("/v1/models").json()["models"][0]
    assert card["method"] == "geoclip" and card["gallery"]["rows"] == 2000
    assert card["backbone"]["checkpoint"] == "clip-vit-l14" and card["calibrated"] is False
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    _post(client)
    text = client.get("/metrics").text
    assert 'geoalign_requests_total{route="/v1/predict",status="200"}' in text
    assert "geoalign_batch_size_count" in text and "geoalign_queue_depth" in text
    assert "geoalign_request_latency_seconds_bucket" in text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "image" in body["multipart/form-data"]["schema"]["properties"]


def test_readyz_reports_a_model_that_failed_to_load(tmp_path):
    broken = ServeConfig(model=str(tmp_path / "no-such-model"))
    with TestClient(create_app(broken)) as c:
        import time

        for _ in range(100):
            res = c.get("/readyz")
            if "failed" in res.text:
                break
            time.sleep(0.05)
        assert res.status_code == 503 and "failed to load" in res.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
        assert _post(c).status_code == 503


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/leaflet/leaflet.js" in page.text
    for path in ("/static/app.js", "/static/style.css"):  # ours: no URL to anywhere else
        res = client.get(path)
        assert res.status_code == 200 and "://" not in res.text
    assert "://" not in page.text
    leaflet = client.get("/static/vendor/leaflet/leaflet.css")
    assert leaflet.status_code == 200 and "url(http" not in leaflet.text.replace(" ", "")
    assert client.get("/static/../../etc/passwd").status_code == 404
    assert client.get("/static/vendor/leaflet/VERSION").status_code == 404  # not in the table
    countries = client.get("/basemap.geojson").json()
    assert len(countries["features"]) > 200
    assert {"code", "name"} <= set(countries["features"][0]["properties"])


def test_cli_serve_binds_loopback_and_hands_the_config_to_workers(monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    from geoalign.cli import app
    from geoalign.serve.config import ENV_VAR

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(target=target, **kw))
    monkeypatch.setenv(ENV_VAR, "")  # undone after the test, whatever the CLI sets
    res = CliRunner().invoke(app, ["serve", "--max-batch", "4", "--cors", "http://a.example"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and seen["factory"] is True and seen["workers"] == 1
    sent = ServeConfig.from_json(__import__("os").environ[ENV_VAR])
    assert sent.max_batch == 4 and sent.cors_origins == ("http://a.example",)
    short = tmp_path / "k.txt"
    short.write_text("abc")
    res = CliRunner().invoke(app, ["serve", "--api-key-file", str(short)])
    assert res.exit_code == 2 and "at least 16 characters" in res.output
    res = CliRunner().invoke(app, ["serve", "--api-key-file", str(tmp_path / "none.txt")])
    assert res.exit_code == 2 and "cannot read it" in res.output


def test_cors_allow_list(config, engine):
    open_to = ServeConfig(**{**config.__dict__, "cors_origins": ("http://ok.example",)})
    with TestClient(create_app(open_to, engine)) as c:
        allowed = c.get("/healthz", headers={"Origin": "http://ok.example"})
        assert allowed.headers.get("access-control-allow-origin") == "http://ok.example"
        other = c.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_preflight_and_refusals_with_an_api_key(config, engine, tmp_path):
    """A browser's preflight carries no API key: it is answered with the CORS headers, and a
    refusal (wrong key) still carries them so the page can read the error."""
    key = tmp_path / "key.txt"
    key.write_text("k" * 32)
    both = ServeConfig(
        **{**config.__dict__, "api_key_file": str(key), "cors_origins": ("http://ok.example",)}
    )
    with TestClient(create_app(both, engine)) as c:
        pre = c.options(
            "/v1/predict",
            headers={
                "Origin": "http://ok.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers.get("access-control-allow-origin") == "http://ok.example"
        assert "x-api-key" in pre.headers.get("access-control-allow-headers", "").lower()
        wrong = c.post("/v1/predict", headers={"Origin": "http://ok.example", "X-API-Key": "no"})
        assert wrong.status_code == 401
        assert wrong.headers.get("access-control-allow-origin") == "http://ok.example"
        files = [("image", ("p.jpg", jpeg_bytes(), "image/jpeg"))]
        ok = c.post(
            "/v1/predict",
            files=files,
            headers={"Origin": "http://ok.example", "X-API-Key": "k" * 32},
        )
        assert ok.status_code == 200, ok.text
        assert ok.headers.get("access-control-allow-origin") == "http://ok.example"


def test_explain_is_a_known_route():
    from geoalign.serve.guard import route_label

    assert route_label("/v1/explain") == "/v1/explain"
    assert route_label("/no/such/path") == "other"


def test_docs_page_is_offline(client):
    """/docs is Swagger UI from files the package ships: no script, style or badge from a CDN."""
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.findall(r"(?:src|href)=['\"]https?://", page.text), page.text
    assert '"validatorUrl": null' in page.text
    for path in re.findall(r"(?:src|href)=['\"](/static/[^'\"]+)", page.text):
        assert client.get(path).status_code == 200, path
    assert client.get("/static/vendor/swagger-ui/LICENSE").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "geoalign"


def test_a_request_naming_another_gallery_is_told_where_to_go(client, small_gallery):
    same = _post(client, gallery=str(small_gallery))
    assert same.status_code == 200, same.text
    other = _post(client, gallery="mp16-500k")
    assert other.status_code == 422
    error = other.json()["error"]
    assert error["field"] == "gallery" and "--gallery mp16-500k" in error["message"]


def test_auto_gallery_answers_to_the_name_it_resolved_to(tmp_path):
    from geoalign.models.checkpoint import record_in_config
    from geoalign.serve.engine import served_galleries
    from test_architecture import tiny_geoclip

    model = tiny_geoclip().save(tmp_path / "model")
    assert served_galleries("auto", str(model)) == ("auto", "geoclip-100k")
    record_in_config(model, {"gallery": "g.csv"})
    assert served_galleries("auto", str(model))[-1] == "g.csv"
    assert served_galleries("mine.csv", str(model)) == ("mine.csv",)


def test_claimed_location_follows_the_one_coordinate_rule():
    """The service reads `claimed` as `geoalign verify --claimed` does (geo.coords): a finite
    longitude wraps, a latitude past the pole or a non-number is the claimed field's error."""
    from geoalign.geo.coords import validate_latlon
    from geoalign.serve.errors import ApiError
    from geoalign.serve.options import parse_options

    def claimed(text):
        return parse_options({"claimed": text}, max_top_k=5, verify=True).claimed

    lat, lon = validate_latlon([10.0], [200.0])
    assert claimed("10,200") == (lat[0], lon[0]) == (10.0, -160.0)
    for bad in ("91,0", "1,nan", "1,inf"):
        with pytest.raises(ApiError) as err:
            claimed(bad)
        assert err.value.field == "claimed" and "np." not in str(err.value)
