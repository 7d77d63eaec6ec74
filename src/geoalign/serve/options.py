"""Request options from query parameters and multipart text fields, each checked with an error
that names the field (a 422 the client can act on, never a 500)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from geoalign.errors import CoordinateError, GeoalignError
from geoalign.geo.coords import validate_latlon
from geoalign.inference.distribution import ESTIMATES
from geoalign.serve.engine import Options
from geoalign.serve.errors import ApiError

PRIOR_FIELDS = ("within", "near", "radius_km", "bbox", "land_only")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _bad(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", field=field)


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad(name, f"must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise _bad(name, f"must be between {low} and {high}, got {value}")
    return value


def _float(params: Mapping[str, str], name: str, default: float | None) -> float | None:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _bad(name, f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _bad(name, f"must be finite, got {text!r}")
    return value


def _bool(params: Mapping[str, str], name: str, default: bool = False) -> bool:
    text = params.get(name)
    if text is None:
        return default
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    raise _bad(name, f"must be true or false, got {text!r}")


def _regions(text: str | None) -> tuple[float, ...]:
    if text is None or not text.strip():
        return ()
    out = []
    for item in text.split(","):
        try:
            p = float(item)
        except ValueError:
            raise _bad(
                "regions", f"{item.strip()!r} is not a number; e.g. regions=0.5,0.9"
            ) from None
        if not 0.0 < p < 1.0:
            raise _bad("regions", f"each probability must be strictly between 0 and 1, got {p:g}")
        out.append(p)
    if len(out) > 5:
        raise _bad("regions", f"at most 5 regions, got {len(out)}")
    return tuple(out)


def _latlon(text: str | None, name: str) -> tuple[float, float] | None:
    if text is None or not text.strip():
        return None
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise _bad(name, f"must be lat,lon in degrees, e.g. 48.86,2.35; got {text!r}") from None
    try:  # the rule every point from code follows (geo.coords), as `geoalign verify --claimed`
        (lat,), (lon,) = validate_latlon([lat], [lon], source=f"{lat:g},{lon:g}")
    except CoordinateError as err:
        raise _bad(name, str(err).replace(": index 0", "")) from None
    return float(lat), float(lon)


def parse_prior(params: Mapping[str, str]) -> Any:
    """The prior of `geoalign predict --within/--near/--radius-km/--bbox/--land-only`."""
    from geoalign.geo.priors import parse_prior as build

    given = {k: params[k] for k in PRIOR_FIELDS if params.get(k) not in (None, "")}
    if not given:
        return None
    radius = _float(params, "radius_km", None) if "radius_km" in given else None
    if radius is not None and radius <= 0:
        raise _bad("radius_km", f"must be positive, got {radius:g}")
    try:
        return build(
            given.get("within"),
            given.get("near"),
            radius,
            given.get("bbox"),
            _bool(params, "land_only"),
        )
    except GeoalignError as err:
        field = next((k for k in ("within", "bbox", "near") if k in given), "within")
        if "radius" in str(err) or "near" in str(err):
            field = "near"
        raise _bad(field, str(err)) from None


def parse_concept_top_k(params: Mapping[str, str], concepts: int) -> int | None:
    """/v1/explain's `top_k`: concepts kept per image, as `geoalign explain --top-k` (None: the
    model's own)."""
    if params.get("top_k") in (None, ""):
        return None
    return _int(params, "top_k", 0, 1, concepts)


def parse_options(params: Mapping[str, str], *, max_top_k: int, verify: bool) -> Options:
    """All options of /v1/predict or /v1/verify (the prior is parsed separately: it may load
    the country polygons, which belongs off the event loop)."""
    estimate = params.get("estimate") or None
    if estimate is not None and estimate not in ESTIMATES:
        raise _bad("estimate", f"unknown estimate {estimate!r}; known: {', '.join(ESTIMATES)}")
    alpha = _float(params, "alpha", 0.05)
    assert alpha is not None
    if not 0.0 < alpha < 1.0:
        raise _bad("alpha", f"must be strictly between 0 and 1, got {alpha:g}")
    return Options(
        top_k=_int(params, "top_k", 5, 1, max_top_k),
        estimate=estimate,
        regions=_regions(params.get("regions")),
        geojson=_bool(params, "geojson") or _bool(params, "heatmap"),
        heatmap=_bool(params, "heatmap"),
        check_exif=_bool(params, "check_exif"),
        alpha=alpha,
        claimed=_latlon(params.get("claimed"), "claimed"),
        verify=verify,
    )


def check_gallery(asked: str | None, served: tuple[str, ...]) -> None:
    """A request may name the gallery it expects; each service holds one gallery in memory (a
    100K gallery's embeddings are 200 MB per worker), so another one is a replica started with
    `--gallery NAME`, and a request naming it here is told so rather than answered silently
    from the wrong one."""
    if asked is None or asked.strip() in ("", *served):
        return
    raise _bad(
        "gallery",
        f"this service searches the gallery {served[-1]!r}, not {asked.strip()!r}; send the "
        f"request to a service started with `geoalign serve --gallery {asked.strip()}`",
    )
