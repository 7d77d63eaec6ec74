"""benchmarks/serve_startup.py without CLIP ViT-L/14 on the machine: it names what is missing and
where it looked, and exits 1 instead of timing something else (unless asked for a stand-in)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_startup.py"


def _script():
    spec = importlib.util.spec_from_file_location("serve_startup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_clip_is_named_and_exits_1(tmp_path, monkeypatch, capsys):
    bench = _script()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("GEOALIGN_CLIP_PATH", raising=False)
    monkeypatch.setattr(bench, "official_geoclip", lambda: (tmp_path / "geoclip", None))
    monkeypatch.setattr(sys, "argv", ["serve_startup.py"])
    assert bench.main() == 1
    err = capsys.readouterr().err
    assert "missing CLIP ViT-L/14 (openai/clip-vit-large-patch14)" in err
    assert str(tmp_path / "hub" / "models--openai--clip-vit-large-patch14") in err
    assert "--stand-in-backbone" in err


def test_a_local_clip_folder_is_found(tmp_path, monkeypatch):
    bench = _script()
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with (folder / "model.safetensors").open("wb") as f:  # sparse: the size, not the bytes
        f.truncate(600_000_000)
    monkeypatch.setenv("GEOALIGN_CLIP_PATH", str(folder))
    assert bench.local_clip()[0] == folder
    (folder / "model.safetensors").unlink()  # a folder without weights is not CLIP
    assert bench.local_clip()[0] is None
