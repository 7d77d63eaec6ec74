"""Where geoalign keeps files on disk, and where the official GeoCLIP wheel lives.

The lowest layer: everything may import it, it imports nothing of geoalign but `errors`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from geoalign.errors import WeightsNotFoundError

GEOCLIP_WHEEL_VERSION = "1.3.0"


def cache_dir() -> Path:
    """Converted weights and gallery embeddings: $GEOALIGN_HOME, else ~/.cache/geoalign."""
    root = os.environ.get("GEOALIGN_HOME") or Path.home() / ".cache" / "geoalign"
    return Path(root)


def geoclip_package_dir() -> Path:
    """The installed `geoclip` wheel's folder (official weights and the 100K gallery)."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(
            "the official GeoCLIP weights come from the `geoclip` package, which is not installed: "
            f"pip install geoclip=={GEOCLIP_WHEEL_VERSION}"
        )
    return Path(spec.origin).parent
