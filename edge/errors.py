"""Every failure becomes ``{"error": {"code", "message"}}`` with a fitting HTTP status.

gRPC status codes from the services map through one table; request validation is 422 with the
same shape. Outages are 503 with ``Retry-After``, so that apps retry: an upstream answering
UNAVAILABLE, and the edge's own Redis or NATS being unreachable (the errors that
:func:`rideshare.grpc_errors.outage_of` names, the services' list too). Anything else
unexpected is 500 with an id that is in the log, never a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
import nats.errors
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rideshare.grpc_errors import outage_of

__all__ = [
    "GRPC_TO_HTTP",
    "RETRY_AFTER_S",
    "ApiError",
    "ErrorBody",
    "ErrorResponse",
    "error_body",
    "from_grpc",
    "install_error_handlers",
]

logger = logging.getLogger(__name__)

# status code -> (HTTP status, error code in the body)
GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (422, "out_of_range"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed_precondition"),
    grpc.StatusCode.ABORTED: (409, "aborted"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "deadline_exceeded"),
    grpc.StatusCode.CANCELLED: (503, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "unimplemented"),
}
# INTERNAL, UNKNOWN, DATA_LOSS: the service failed; its details stay in its own log.
_UPSTREAM_FAILED = (502, "upstream_error")
# Retry-After (seconds) on a 503 for an outage and a 429 from a busy upstream: servers come
# back within seconds (restarted by the launcher), a busy queue drains within a second or two,
# and clients add their own backoff on repeated refusals.
RETRY_AFTER_S = 1
_RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_S)}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_argument",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


class ApiError(Exception):
    """An error to return to the client as it is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def from_grpc(exc: grpc.aio.AioRpcError, upstream: str = "") -> ApiError:
    """The client-facing error for a failed gRPC call."""
    code = exc.code()
    status, name = GRPC_TO_HTTP.get(code, _UPSTREAM_FAILED)
    if (status, name) == _UPSTREAM_FAILED or status >= 500:
        # Internal details of a failing service are not the client's business.
        message = f"{upstream or 'upstream'} service {name.replace('_', ' ')}"
    else:
        message = exc.details() or name.replace("_", " ")
    headers = dict(_RETRY_AFTER) if status in (429, 503) else None
    return ApiError(status, name, message, headers=headers)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the one shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _json(exc.status, error_body(exc.code, exc.message), exc.headers)

    async def grpc_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        err = from_grpc(exc)
        return _json(err.status, error_body(err.code, err.message), err.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return _json(422, error_body("invalid_argument", message, jsonable_encoder(details)))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = dict(exc.headers) if exc.headers else None
        return _json(exc.status_code, error_body(code, str(exc.detail)), headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        server = outage_of(exc)
        if server is not None:
            logger.warning("%s unavailable, answering 503: %r", server, exc)
            return _json(
                503,
                error_body("unavailable", f"{server} is unavailable; retry later"),
                dict(_RETRY_AFTER),
            )
        error_id = uuid.uuid4().hex[:12]
        logger.exception("unhandled error %s", error_id)
        return _json(500, error_body("internal", f"internal error (id {error_id})"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(grpc.aio.AioRpcError, grpc_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # The client libraries' error bases get the handler directly as well: Starlette answers
    # those in its exception middleware, while a handler for Exception alone runs in the
    # outermost one, which re-raises after answering (a traceback per request in an outage).
    for base in (RedisError, nats.errors.Error, OSError):
        app.add_exception_handler(base, unexpected)
    app.add_exception_handler(Exception, unexpected)
