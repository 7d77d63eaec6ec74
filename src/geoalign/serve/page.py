"""The web page and its assets, served from memory.

Every asset is read from the package once, into a fixed table keyed by URL path: a request
path is only ever a key into that table, never a filesystem path.
"""

from __future__ import annotations

import functools
import mimetypes
from importlib import resources

from fastapi.responses import Response

from geoalign.serve.errors import ApiError

ASSETS = {
    "/": "index.html",
    "/static/app.js": "app.js",
    "/static/style.css": "style.css",
    "/static/vendor/leaflet/leaflet.js": "vendor/leaflet/leaflet.js",
    "/static/vendor/leaflet/leaflet.css": "vendor/leaflet/leaflet.css",
    "/static/vendor/leaflet/LICENSE": "vendor/leaflet/LICENSE",
    **{
        f"/static/vendor/swagger-ui/{name}": f"vendor/swagger-ui/{name}"
        for name in (
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "favicon-32x32.png",
            "LICENSE",
            "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt",
        )
    },
    **{
        f"/static/vendor/leaflet/images/{name}": f"vendor/leaflet/images/{name}"
        for name in (
            "layers.png",
            "layers-2x.png",
            "marker-icon.png",
            "marker-icon-2x.png",
            "marker-shadow.png",
        )
    },
}
PAGE_ROUTES = tuple(ASSETS)


@functools.cache
def _asset(path: str) -> tuple[bytes, str]:
    name = ASSETS[path]
    data = resources.files("geoalign.serve").joinpath("static", *name.split("/")).read_bytes()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(("LICENSE", "NOTICE")):
        kind = "text/plain"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    return data, kind


def page_response(path: str) -> Response:
    if path not in ASSETS:
        raise ApiError(404, "no such page", field=None)
    data, kind = _asset(path)
    headers = {
        "Cache-Control": "no-cache" if path == "/" else "public, max-age=3600",
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: blob: https: http:; "
            "style-src 'self' 'unsafe-inline'; script-src 'self'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    return Response(data, media_type=kind, headers=headers)
