"""Structured logging: one JSON object per line on stderr, with the service name and request id.

Every process calls :func:`configure_logging` once at start. Modules log as usual through
``logging.getLogger(__name__)`` with lazy ``%s`` arguments. The request id of the gRPC call (or
other unit of work) being handled lives in :data:`request_id_var`; the gRPC interceptors set it
per call and forward it to downstream calls, and every log line written while it is set carries
it as ``request_id``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

__all__ = [
    "REQUEST_ID_METADATA_KEY",
    "JsonFormatter",
    "configure_logging",
    "current_request_id",
    "new_request_id",
    "request_id_var",
]

# gRPC metadata key that carries the request id from call to call.
REQUEST_ID_METADATA_KEY = "x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("rideshare_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def current_request_id() -> str | None:
    """The request id of the work this task is doing, or None outside any request."""
    return request_id_var.get()


def new_request_id() -> str:
    """A fresh request id: 16 hex digits. Not a secret, so a cheap PRNG is enough."""
    return f"{random.getrandbits(64):016x}"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, service, logger, msg, request_id, exc.

    Fields passed with ``extra=`` are added as they are (``str()`` when not JSON-serialisable).
    The request id comes from the record (``extra={"request_id": ...}``) or else from
    :data:`request_id_var` at formatting time, which is the logging call's context for the
    synchronous handlers configured here.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = record.__dict__.get("request_id") or request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler that configure_logging installed, so a second call replaces it."""


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of this process to stderr as JSON lines tagged with ``service``.

    Replaces the root logger's handlers (a service process owns its logging), so calling it
    twice is harmless. ``level`` is a logging level name such as ``"DEBUG"``.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if isinstance(old, _Handler):
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
