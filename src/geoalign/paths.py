"""Where geoalign keeps its files and where installed data packages live.

The lowest layer (beside `errors`): `geo`, `data`, `nn` and everything above read these folders
from here, so that no low module has to import the model zoo just to learn a path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from geoalign.errors import WeightsNotFoundError

GEOCLIP_WHEEL_VERSION = "1.3.0"


def cache_dir() -> Path:
    """Where converted weights and gallery embeddings live ($GEOALIGN_HOME, else ~/.cache/geoalign)."""
    root = os.environ.get("GEOALIGN_HOME") or Path.home() / ".cache" / "geoalign"
    return Path(root)


def geoclip_package_dir() -> Path:
    """The installed `geoclip` wheel's folder (weights, GPS gallery), found without importing it."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(
            "the official GeoCLIP weights come from the `geoclip` package, which is not installed: "
            f"pip install geoclip=={GEOCLIP_WHEEL_VERSION}"
        )
    return Path(spec.origin).parent
