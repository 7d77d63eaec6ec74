"""What /docs shows of the multipart endpoints: the upload field and every option."""

from __future__ import annotations

from typing import Any

UPLOAD_FIELD = "image"

_OPTION_DOCS = {
    "top_k": ("integer", "Candidates per image (default 5)."),
    "estimate": ("string", "Point estimate: top1, mode, mean or median."),
    "regions": ("string", "Confidence regions, e.g. 0.5,0.9."),
    "within": ("string", "Prior: countries/regions, e.g. FR or US-CA,MX."),
    "near": ("string", "Prior: lat,lon centre of a radius (with radius_km)."),
    "radius_km": ("number", "Prior: radius around `near`, km."),
    "bbox": ("string", "Prior: min_lat,min_lon,max_lat,max_lon."),
    "land_only": ("boolean", "Prior: only candidates on land."),
    "gallery": ("string", "The gallery to search: must be the one this service loaded."),
    "geojson": ("boolean", "Also return each image's estimate and regions as GeoJSON."),
    "heatmap": ("boolean", "GeoJSON plus the densest density cells (kind heat, p per km²)."),
    "check_exif": ("boolean", "Also check each photo's EXIF GPS claim (predict only)."),
    "claimed": ("string", "verify: the claimed lat,lon (default: the photo's EXIF GPS)."),
    "alpha": ("number", "verify: false-alarm rate of the claim check (default 0.05)."),
}


EXPLAIN_DOCS = {
    "top_k": ("integer", "Concepts kept per image (default: the model's, as `explain --top-k`)."),
}


def openapi_body(verify: bool = False, explain: bool = False) -> dict[str, Any]:
    """The multipart request body of /v1/predict, /v1/verify or /v1/explain as OpenAPI: the
    routes read the form themselves (several files, options as fields or query parameters),
    so FastAPI cannot infer it."""
    props: dict[str, Any] = {
        UPLOAD_FIELD: {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more image files (repeat the field).",
        }
    }
    docs = EXPLAIN_DOCS if explain else _OPTION_DOCS
    for name, (kind, text) in docs.items():
        if (name in ("claimed", "alpha")) and not verify:
            continue
        props[name] = {"type": kind, "description": text + " Also accepted as a query parameter."}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": props, "required": [UPLOAD_FIELD]}
                }
            },
        }
    }
