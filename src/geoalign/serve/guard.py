"""The outermost ASGI layer: request id, API key, body-size limit, per-request timeout,
access log and request metrics, for every request before any route sees it.

It is plain ASGI (not a Starlette middleware) because the body limit and the timeout must hold
while the multipart body is still arriving: a body that grows past the limit is cut off as it
streams (413), and a client trickling bytes is answered 504 when its time is up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from geoalign.serve.context import new_request_id, request_id, reset_request_id
from geoalign.serve.errors import error_body
from geoalign.serve.metrics import Metrics

log = logging.getLogger("geoalign.serve.access")
KNOWN_ROUTES = {
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/predict",
    "/v1/verify",
    "/v1/models",
    "/v1/explain",
    "/docs",
    "/openapi.json",
    "/page-config.json",
    "/basemap.geojson",
}


class BodyTooLarge(Exception):
    """The request body grew past the upload limit while it was being read."""


def route_label(path: str) -> str:
    """A bounded label set for metrics: unknown paths are one label, not one each."""
    if path in KNOWN_ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class Guard:
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        max_body: int,
        timeout_s: float,
        api_key: str | None,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = new_request_id(headers.get("x-request-id"))
        rid = request_id()
        route = route_label(scope["path"])
        started = time.perf_counter()
        state = {"status": 500, "sent": False, "received": 0}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            refusal = self._refuse(scope, headers)
            if refusal is not None:
                await _send_json(send_with_id, *refusal)
                return
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, limited_receive, send_with_id)
        except TimeoutError:
            log.warning("timed out after %.0f s", self.timeout_s)
            if not state["sent"]:
                await _send_json(
                    send_with_id,
                    504,
                    f"the request took longer than the service's limit of {self.timeout_s:g} s",
                    None,
                )
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, str(state["status"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "%s %s -> %s in %.1f ms",
                scope["method"],
                scope["path"] if route != "other" else "(unknown path)",
                state["status"],
                elapsed * 1000,
            )
            reset_request_id(token)

    def _refuse(
        self, scope: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, str, str | None, dict[str, str]] | None:
        """A refusal decided from the headers alone: a missing key, or a declared body size
        above the limit (answered before a byte of it is read)."""
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            offered = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            if not offered or not hmac.compare_digest(offered.encode(), self.api_key.encode()):
                return (
                    401,
                    "missing or wrong API key: send it in the X-API-Key header",
                    "X-API-Key",
                    {},
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, f"Content-Length must be a number, got {length!r}", "Content-Length", {}
            if int(length) > self.max_body:
                return 413, self.too_large(), "image", {}
        return None

    def too_large(self) -> str:
        return (
            f"the request body is larger than the service's upload limit of "
            f"{self.max_body / 1024 / 1024:g} MB"
        )


async def _send_json(
    send, status: int, message: str, field: str | None, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_body(status, message, field)).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
