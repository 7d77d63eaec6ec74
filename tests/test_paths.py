"""geoalign.paths: the cache folder and the geoclip wheel's folder, read at call time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from geoalign import paths
from geoalign.errors import WeightsNotFoundError


def test_cache_dir_follows_geoalign_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOALIGN_HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path
    monkeypatch.delenv("GEOALIGN_HOME")
    assert paths.cache_dir() == Path.home() / ".cache" / "geoalign"


def test_geoclip_wheel_folder_or_an_install_hint(monkeypatch):
    spec = importlib.util.find_spec("geoclip")
    if spec is not None:
        assert (paths.geoclip_package_dir() / "__init__.py").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install geoclip==1\.3\.0"):
        paths.geoclip_package_dir()
