"""geoalign: worldwide image geo-localization (GeoCLIP, concept-aware alignment, GeoSURGE)."""

from typing import TYPE_CHECKING, Any

from geoalign._version import __version__

if TYPE_CHECKING:
    from geoalign.geolocator import Geolocator


def __getattr__(name: str) -> Any:
    # Lazy: `import geoalign` stays cheap (the CLI's --help must not import torch).
    if name == "Geolocator":
        from geoalign.geolocator import Geolocator

        return Geolocator
    raise AttributeError(f"module 'geoalign' has no attribute {name!r}")


__all__ = ["Geolocator", "__version__"]
