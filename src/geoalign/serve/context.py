"""The request id: set once per request, read by every log line and error body.

A context variable follows the request through `await`s and into `run_in_executor` threads
(asyncio copies the context), so worker threads log under the right id too.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def request_id() -> str:
    return _REQUEST_ID.get()


def new_request_id(offered: str | None = None) -> contextvars.Token:
    """Use the client's X-Request-ID when it is a short safe token (so a proxy's id carries
    through the logs), else a fresh random one."""
    rid = offered if offered and _SAFE_ID.fullmatch(offered) else uuid.uuid4().hex[:16]
    return _REQUEST_ID.set(rid)


def reset_request_id(token: contextvars.Token) -> None:
    _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (a handler's filter: it also sees other loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Service logs on stderr, each line with its request id ('-' outside a request)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    for name in ("geoalign.serve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
