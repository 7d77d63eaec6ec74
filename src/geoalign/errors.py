"""User-facing errors. The CLI prints these without a traceback; anything else is a bug."""


class GeoalignError(Exception):
    """Base class for errors caused by the user's input, data or environment."""


class CoordinateError(GeoalignError, ValueError):
    """A latitude/longitude value is missing, non-finite or out of range."""


class DataError(GeoalignError, ValueError):
    """A data file (manifest, gallery, label file) is malformed; the message names file and row."""


class WeightsNotFoundError(GeoalignError, FileNotFoundError):
    """Pretrained weights are absent; the message says where we looked and how to provide them."""
