"""Test-wide settings: offline, a private cache, deterministic torch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _geoalign_home(tmp_path_factory):
    """Converted weights and gallery caches go to a throwaway folder, not the user's cache."""
    home = tmp_path_factory.mktemp("geoalign-home")
    old = os.environ.get("GEOALIGN_HOME")
    os.environ["GEOALIGN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("GEOALIGN_HOME", None)
    else:
        os.environ["GEOALIGN_HOME"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
