"""geoalign: worldwide image geo-localization (GeoCLIP, concept-aware alignment, GeoSURGE)."""

__version__ = "0.1.0"
