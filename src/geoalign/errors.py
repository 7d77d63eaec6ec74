"""User-facing errors. The CLI prints these without a traceback; anything else is a bug."""


class GeoalignError(Exception):
    """Base class for errors caused by the user's input, data or environment."""


class CoordinateError(GeoalignError, ValueError):
    """A latitude/longitude value is missing, non-finite or out of range."""


class DataError(GeoalignError, ValueError):
    """A data file (manifest, gallery, label file) is malformed; the message names file and row."""


class WeightsNotFoundError(GeoalignError, FileNotFoundError):
    """Pretrained weights are absent; the message says where we looked and how to provide them."""


def shown(value: object) -> str:
    """A value as an error message shows it: numpy scalars as the Python numbers they hold
    ("nan", "95.0", not "np.float64(nan)"), strings quoted, anything else as its repr."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        value = item()
    return repr(value)
