"""Client-facing errors: one JSON shape, naming the field at fault, never a traceback.

{"error": {"status": 413, "field": "image", "message": "...", "request_id": "..."}}
"""

from __future__ import annotations

from typing import Any

from geoalign.serve.context import request_id


class ApiError(Exception):
    """An error a client caused (4xx) or the service reports (503/504), with the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.field)


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "status": status,
            "field": field,
            "message": message,
            "request_id": request_id(),
        }
    }
