"""geoalign: worldwide image geo-localization (GeoCLIP, concept-aware alignment, GeoSURGE)."""

from typing import TYPE_CHECKING, Any

from geoalign._version import __version__

if TYPE_CHECKING:
    from geoalign.inference.locator import Geolocator
    from geoalign.models.registry import load_model


def __getattr__(name: str) -> Any:
    # Lazy: `import geoalign` stays cheap (the CLI's --help must not import torch).
    if name == "Geolocator":
        from geoalign.inference.locator import Geolocator

        return Geolocator
    if name == "load_model":
        from geoalign.models.registry import load_model

        return load_model
    raise AttributeError(f"module 'geoalign' has no attribute {name!r}")


__all__ = ["Geolocator", "__version__", "load_model"]
