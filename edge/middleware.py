"""One ASGI middleware for every HTTP request: request id, rate limits, metrics.

- ``X-Request-Id``: taken from the request when it is a sane token, else generated; set as
  the request id of the task (so it is in every log line and travels to the services as gRPC
  metadata, rideshare.grpc_client) and returned on every response.
- Rate limits on ``/v1/``: one bucket per client IP and, when a valid bearer token is present,
  one per token subject (edge/ratelimit.py); refusal is 429 with Retry-After.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.auth import AuthError, decode_token
from edge.context import EdgeContext
from edge.errors import error_body
from edge.metrics import HTTP_REQUESTS, HTTP_SECONDS, RATE_LIMITED
from edge.ratelimit import Bucket, retry_after_header
from rideshare.log import new_request_id, request_id_var

__all__ = ["EdgeMiddleware", "client_ip"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HEADER = b"x-request-id"


def client_ip(scope: Scope) -> str:
    """The client address every per-client limit is keyed by (here and edge/logins.py)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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
            retry = await self._rate_limit(scope, headers)
            if retry:
                RATE_LIMITED.inc()
                await _json_response(
                    send_with_id,
                    429,
                    error_body("rate_limited", "too many requests; retry later"),
                    [(b"retry-after", retry_after_header(retry).encode())],
                )
                return
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(method, path, str(status)).inc()
            HTTP_SECONDS.labels(method, path).observe(time.perf_counter() - started)
            request_id_var.reset(token)

    async def _rate_limit(self, scope: Scope, headers: dict[bytes, bytes]) -> float:
        if not scope["path"].startswith("/v1/"):
            return 0.0
        ctx: EdgeContext | None = getattr(scope["app"].state, "ctx", None)
        if ctx is None:
            return 0.0
        s = ctx.settings
        buckets = [Bucket(f"ip:{client_ip(scope)}", s.rate_per_ip, s.burst_per_ip)]
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            try:
                principal = decode_token(s.jwt_secret, auth[7:].strip())
            except AuthError:
                pass
            else:
                buckets.append(Bucket(f"sub:{principal.sub}", s.rate_per_token, s.burst_per_token))
        return await ctx.limiter.take(buckets)


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
