"""Photo verification: does the image support the location it claims (its EXIF GPS, or a
location a person gives)?

The claim's *level* is the smallest p whose (calibrated) p-region of the model's distribution
contains the claimed point (`Distribution.level_of`). The claim is "inconsistent at alpha" when
it lies outside the (1 - alpha)-region: with calibrated regions, a true claim is flagged with
probability about alpha (the false-alarm rate, measured by `geoalign evaluate`), and the test's
power grows with how far the claim is from where the photo points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.errors import DataError
from geoalign.geo.coords import validate_latlon
from geoalign.geo.distance import haversine_km

GPS_IFD = 0x8825
_TAGS = {1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude"}


def _rational(value: Any, what: str, source: str) -> float:
    """An EXIF rational (IFDRational, a (num, den) pair or a number) as a float."""
    try:
        if isinstance(value, tuple) and len(value) == 2:
            num, den = value
            if den == 0:
                raise ZeroDivisionError
            return float(Fraction(int(num), int(den)))
        den = getattr(value, "denominator", 1)
        if den == 0:
            raise ZeroDivisionError
        out = float(value)
    except ZeroDivisionError:
        raise DataError(f"{source}: EXIF {what} has a zero denominator") from None
    except (TypeError, ValueError):
        raise DataError(f"{source}: EXIF {what} is not a number ({value!r})") from None
    if not math.isfinite(out):
        raise DataError(f"{source}: EXIF {what} is not finite")
    return out


def _degrees(dms: Any, ref: Any, axis: str, source: str) -> float:
    """Degrees from EXIF (degrees, minutes, seconds) and its N/S or E/W reference."""
    if not isinstance(dms, (tuple, list)) or len(dms) != 3:
        raise DataError(
            f"{source}: EXIF GPS{axis} must be (degrees, minutes, seconds), got {dms!r}"
        )
    d, m, s = (_rational(v, f"GPS{axis}[{i}]", source) for i, v in enumerate(dms))
    if not (0 <= m < 60 and 0 <= s < 60 and d >= 0):
        raise DataError(
            f"{source}: EXIF GPS{axis} = {d:g}° {m:g}' {s:g}\" is out of range "
            "(minutes and seconds must be in [0, 60))"
        )
    ref = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref or "")
    ref = ref.strip("\x00 ").upper()
    allowed = ("N", "S") if axis == "Latitude" else ("E", "W")
    if ref not in allowed:
        raise DataError(f"{source}: EXIF GPS{axis}Ref is {ref!r}, expected {' or '.join(allowed)}")
    value = d + m / 60 + s / 3600
    return -value if ref in ("S", "W") else value


def exif_gps_from_image(image: Any, source: str, *, hint: str = "") -> tuple[float, float]:
    """(lat, lon) from an opened PIL image's EXIF GPS tags; DataError when absent or malformed.

    The one EXIF GPS parser: `geoalign verify` reads it from a path (`read_exif_gps`), the
    service from an upload in memory. `hint` ends the "no GPS" message with what to do instead."""
    gps = image.getexif().get_ifd(GPS_IFD)
    if not gps or 2 not in gps or 4 not in gps:
        raise DataError(f"{source}: the photo has no EXIF GPS location{hint}")
    lat = _degrees(gps.get(2), gps.get(1), "Latitude", source)
    lon = _degrees(gps.get(4), gps.get(3), "Longitude", source)
    la, lo = validate_latlon([lat], [lon], source=f"{source} EXIF GPS")
    return float(la[0]), float(lo[0])


def read_exif_gps(path: str | Path) -> tuple[float, float]:
    """(lat, lon) from a photo file's EXIF GPS tags; a clear error when absent or malformed."""
    from PIL import Image, UnidentifiedImageError

    source = str(path)
    try:
        with Image.open(path) as image:
            return exif_gps_from_image(
                image, source, hint="; give the claim with --claimed LAT,LON"
            )
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{source}: cannot read the image ({err})") from err


@dataclass
class Verdict:
    """The outcome of checking one claim against one photo's distribution."""

    claimed_lat: float
    claimed_lon: float
    claim_source: str  # "exif" or "given"
    level: float  # the smallest p whose region contains the claim (1.0: none below 1)
    alpha: float
    consistent: bool
    estimate_lat: float
    estimate_lon: float
    distance_km: float  # from the model's estimate to the claim
    region_area_km2: float  # area of the (1 - alpha)-region

    @property
    def verdict(self) -> str:
        return "consistent" if self.consistent else "inconsistent"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise DataError(f"--alpha must be strictly between 0 and 1, got {alpha:g}")
    return alpha


def verify_claim(
    distribution: Any,
    claimed: tuple[float, float],
    *,
    alpha: float = 0.05,
    estimate: str = "median",
    claim_source: str = "given",
) -> Verdict:
    """Is `claimed` inside the (1 - alpha)-region of `distribution`?"""
    alpha = check_alpha(alpha)
    lat, lon = validate_latlon([claimed[0]], [claimed[1]], source="claimed location")
    point = np.array([[lat[0], lon[0]]])
    level = float(distribution.level_of(point)[0])
    est = distribution.estimate(estimate)
    region = distribution.region(1 - alpha, countries=False)
    return Verdict(
        claimed_lat=float(lat[0]),
        claimed_lon=float(lon[0]),
        claim_source=claim_source,
        level=level,
        alpha=alpha,
        consistent=level <= 1 - alpha,
        estimate_lat=float(est[0]),
        estimate_lon=float(est[1]),
        distance_km=float(haversine_km(est[0], est[1], lat[0], lon[0])),
        region_area_km2=region.area_km2,
    )
