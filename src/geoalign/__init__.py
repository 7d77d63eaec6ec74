"""geoalign: worldwide image geo-localization (GeoCLIP, concept-aware alignment, GeoSURGE)."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from geoalign.geolocator import Geolocator


def __getattr__(name: str) -> Any:
    # Lazy: `import geoalign` stays cheap (the CLI's --help must not import torch).
    if name == "Geolocator":
        from geoalign.geolocator import Geolocator

        return Geolocator
    raise AttributeError(f"module 'geoalign' has no attribute {name!r}")


__all__ = ["Geolocator", "__version__"]
