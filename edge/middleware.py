"""One ASGI middleware for every HTTP request and WebSocket handshake: client address,
request id, rate limits, body size, metrics.

- Client address: the peer, or the client a trusted proxy names in ``X-Forwarded-For``
  (edge/clientaddr.py); written into ``scope["client"]``, so ``request.client`` is the one
  address every limit keys on.
- ``X-Request-Id``: taken from the request when it is a sane token, else generated; set as
  the request id of the task (so it is in every log line and travels to the services as gRPC
  metadata, rideshare.grpc_client) and returned on every response.
- Rate limits on ``/v1/``, HTTP and WebSocket handshakes alike: one bucket per client address
  and, when a valid token is present (bearer header; ``?token=`` on a socket), one per token
  subject (edge/ratelimit.py). Refusal is 429 with Retry-After; for a socket, the same 429
  answers the upgrade (edge/wire.py).
- Request bodies: at most ``max_body_bytes``, checked before anything reads them: a larger
  Content-Length is refused at once, a chunked body as soon as it passes the limit; 413.
  The connection stays open (uvicorn drops the rest of the body unread by the app, without
  buffering it): closing it while the client still sends makes most clients report a reset
  instead of the 413.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.auth import AuthError, decode_token
from edge.clientaddr import client_address
from edge.context import EdgeContext
from edge.errors import error_body
from edge.metrics import HTTP_REQUESTS, HTTP_SECONDS, RATE_LIMITED
from edge.ratelimit import Bucket, retry_after_header
from edge.settings import EdgeSettings
from rideshare.log import new_request_id, request_id_var

__all__ = ["EdgeMiddleware", "ip_bucket", "quiet_denied_handshakes", "user_bucket"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HEADER = b"x-request-id"
_FORWARDED_FOR = b"x-forwarded-for"
_DENIAL = "websocket.http.response"
# Set in the task that served a handshake this middleware refused (see quiet_denied_handshakes).
_denied: ContextVar[bool] = ContextVar("handshake_denied", default=False)
_INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


def ip_bucket(settings: EdgeSettings, ip: str) -> Bucket:
    return Bucket(f"ip:{ip}", settings.rate_per_ip, settings.burst_per_ip)


def user_bucket(settings: EdgeSettings, sub: str) -> Bucket:
    return Bucket(f"sub:{sub}", settings.rate_per_token, settings.burst_per_token)


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ctx: EdgeContext | None = getattr(scope["app"].state, "ctx", None)
        if ctx is not None:
            _resolve_client(scope, ctx.settings)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, ctx)
            return
        headers = dict(scope["headers"])
        given = headers.get(_HEADER, b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        method = scope["method"]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (_HEADER, request_id.encode())]
            await send(message)

        try:
            bearer = headers.get(b"authorization", b"").decode("latin-1")
            retry = await _rate_limit(
                scope, ctx, bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
            )
            if retry:
                RATE_LIMITED.inc()
                await _json_response(
                    send_with_id,
                    429,
                    error_body("rate_limited", "too many requests; retry later"),
                    [(b"retry-after", retry_after_header(retry).encode())],
                )
                return
            if ctx is not None:
                limit = ctx.settings.max_body_bytes
                if _declared_length(headers) > limit:
                    await _json_response(
                        send_with_id,
                        413,
                        error_body("payload_too_large", _too_large(limit)),
                        [],
                    )
                    return
                receive = _limit_body(receive, limit)
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(method, path, str(status)).inc()
            HTTP_SECONDS.labels(method, path).observe(time.perf_counter() - started)
            request_id_var.reset(token)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, ctx: EdgeContext | None
    ) -> None:
        """A handshake takes from the same buckets as a request; refused, it is answered
        with a 429 instead of the upgrade (a close before accept would read as 403)."""
        token = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("token")
        retry = await _rate_limit(scope, ctx, token)
        if not retry:
            await self.app(scope, receive, send)
            return
        RATE_LIMITED.inc()
        await receive()  # websocket.connect
        if _DENIAL not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 4429, "reason": "rate limited"})
            return
        payload = json.dumps(error_body("rate_limited", "too many requests; retry later"))
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", retry_after_header(retry).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": payload.encode()})
        _denied.set(True)


def quiet_denied_handshakes(record: logging.LogRecord) -> bool:
    """A filter for uvicorn's logger: its websockets-sansio protocol does not count a denial
    response as a finished handshake and logs an error for each one (uvicorn pull request
    3138), a line per refusal in a flood. It runs in the task that served the handshake, so
    the mark set there says whether this was a refusal; every other error still shows."""
    return not (_denied.get() and record.getMessage() == _INCOMPLETE_HANDSHAKE)


def _resolve_client(scope: Scope, settings: EdgeSettings) -> None:
    if not settings.trusted_proxies or not scope.get("client"):
        return
    peer = scope["client"][0]
    forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == _FORWARDED_FOR]
    client = client_address(peer, forwarded, settings.trusted_proxies)
    if client != peer:
        scope["client"] = (client, 0)


async def _rate_limit(scope: Scope, ctx: EdgeContext | None, token: str | None) -> float:
    """0.0 when the request may pass, else the seconds to wait."""
    if ctx is None or not scope["path"].startswith("/v1/"):
        return 0.0
    s = ctx.settings
    client = scope.get("client")
    buckets = [ip_bucket(s, client[0] if client else "unknown")]
    if token:
        try:
            principal = decode_token(s.jwt_secret, token)
        except AuthError:
            pass
        else:
            buckets.append(user_bucket(s, principal.sub))
    return await ctx.limiter.take(buckets)


def _declared_length(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return 0  # the server refuses a malformed length before it gets here


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


def _limit_body(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses (413) a body growing past ``limit`` while it streams in; the
    exception reaches the route that reads the body and the error handlers answer it."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, _too_large(limit))
        return message

    return limited


async def _json_response(
    send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
