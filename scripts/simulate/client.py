"""How a simulated phone talks to the edge: HTTP calls with deadlines (and the app-side
handling of 429 and retries), and a WebSocket that stays connected.

Everything it sees goes into the run's ``Stats``; 5xx answers are kept for the invariants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from scripts.simulate.invariants import ServerError
from scripts.simulate.stats import Stats

__all__ = ["Api", "ApiError", "LiveSocket", "now_ms"]

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 5.0
# Routes where a 409/404 is a race a real app meets and handles, not a failure.
RACY_OPS = frozenset({"accept", "decline", "arrive", "start", "complete", "cancel", "rating"})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ApiError(Exception):
    """A call that did not succeed: ``status`` 0 for a transport failure."""

    def __init__(self, op: str, status: int, code: str, message: str = "") -> None:
        super().__init__(f"{op}: {status} {code} {message}".strip())
        self.op = op
        self.status = status
        self.code = code

    @property
    def conflict(self) -> bool:
        return self.status in (404, 409)


class Api:
    """The edge's HTTP API as the apps call it."""

    def __init__(
        self, http: httpx.AsyncClient, stats: Stats, server_errors: list[ServerError]
    ) -> None:
        self.http = http
        self.stats = stats
        self.server_errors = server_errors

    async def call(
        self,
        method: str,
        path: str,
        *,
        op: str,
        route: str | None = None,
        token: str | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_transport: int = 0,
        retry_429: int = 5,
    ) -> Any:
        """The JSON body of a 2xx answer (None for 204); ApiError otherwise.

        429 is waited out (Retry-After, bounded) like an app does; a transport failure is
        retried only when asked (calls that carry an Idempotency-Key).
        """
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        attempt = 0
        while True:
            attempt += 1
            try:
                r = await self.http.request(method, path, json=body, headers=h)
            except httpx.TimeoutException:
                kind = "timeout"
            except httpx.TransportError as exc:
                kind = type(exc).__name__
            else:
                if r.status_code == 429 and attempt <= retry_429:
                    self.stats.count("http_429_waited")
                    await asyncio.sleep(_retry_after(r))
                    continue
                if r.is_success:
                    return None if r.status_code == 204 or not r.content else r.json()
                code = _error_code(r)
                if r.status_code >= 500:
                    self.server_errors.append(
                        ServerError(method, route or path, r.status_code, code)
                    )
                label = f"{op} {r.status_code} {code}"
                if r.status_code in (404, 409) and op in RACY_OPS:
                    self.stats.conflicts[label] += 1
                else:
                    self.stats.errors[label] += 1
                raise ApiError(op, r.status_code, code, _error_message(r))
            self.stats.errors[f"{op} {kind}"] += 1
            if attempt > retry_transport:
                raise ApiError(op, 0, kind)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))

    async def trip(
        self,
        trip_id: str,
        command: str = "",
        *,
        token: str,
        body: Mapping[str, Any] | None = None,
        op: str | None = None,
    ) -> Any:
        """``GET /v1/trips/{id}`` or ``POST /v1/trips/{id}/<command>``."""
        if not command:
            path, route = f"/v1/trips/{trip_id}", "/v1/trips/{id}"
            return await self.call("GET", path, op=op or "get_trip", route=route, token=token)
        return await self.call(
            "POST",
            f"/v1/trips/{trip_id}/{command}",
            op=op or command,
            route=f"/v1/trips/{{id}}/{command}",
            token=token,
            body=body,
        )


def _retry_after(r: httpx.Response) -> float:
    try:
        wait = float(r.headers.get("Retry-After", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.05), MAX_RETRY_AFTER_S) * random.uniform(1.0, 1.5)


def _error_json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_code(r: httpx.Response) -> str:
    return str(_error_json(r).get("code", "error"))


def _error_message(r: httpx.Response) -> str:
    return str(_error_json(r).get("message", ""))[:200]


class LiveSocket:
    """One app's WebSocket to the edge that stays up: it reconnects after a drop or after
    ``silence_s`` without any frame (the edge pings every 4 s; FIELD-NOTES: 7 s), and the
    edge sends a snapshot first on every (re)connect."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        on_frame: Callable[[dict[str, Any]], None],
        on_connect: Callable[[], None],
        stats: Stats,
        silence_s: float = 7.0,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._token = token
        self._on_frame = on_frame
        self._on_connect = on_connect
        self._stats = stats
        self._silence_s = silence_s
        self._open_timeout_s = open_timeout_s
        self._ws: ClientConnection | None = None
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set."""
        backoff = 0.2
        first = True
        while not stop.is_set():
            if not first:
                self._stats.count("ws_reconnects")
            first = False
            try:
                async with connect(
                    self._url,
                    open_timeout=self._open_timeout_s,
                    close_timeout=2.0,
                    ping_interval=None,  # the edge pings at the application level
                    max_queue=256,
                ) as ws:
                    # The token goes in the first message, not the URL: URLs end up in logs.
                    await ws.send(json.dumps({"type": "auth", "token": self._token}))
                    self._ws = ws
                    self._on_connect()
                    self.connected.set()
                    backoff = 0.2
                    await self._read(ws, stop)
            except (OSError, TimeoutError, WebSocketException) as exc:
                kind = "ws_silence" if isinstance(exc, TimeoutError) else "ws_dropped"
                if isinstance(exc, InvalidStatus):
                    kind = f"ws_refused {exc.response.status_code}"
                if not stop.is_set():
                    self._stats.errors[kind] += 1
            finally:
                self._ws = None
                self.connected.clear()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff * random.uniform(1.0, 1.5)):
                        await stop.wait()
                backoff = min(backoff * 2, 5.0)

    async def _read(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {receiving, stopping},
                    timeout=self._silence_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                        await receiving
                    return
                if not done:
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                        await receiving
                    raise TimeoutError("no frame for too long")
                text = receiving.result()
                try:
                    frame = json.loads(text)
                except ValueError:
                    self._stats.errors["ws_bad_json"] += 1
                    continue
                if not isinstance(frame, dict):
                    continue
                if frame.get("type") == "error":
                    self._stats.errors[f"ws_error {frame.get('code')}"] += 1
                    continue
                self._on_frame(frame)
        finally:
            stopping.cancel()

    async def send(self, frame: Mapping[str, Any]) -> bool:
        """Send one frame if connected; False when the socket is down (the app drops it)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            async with asyncio.timeout(2.0):
                await ws.send(json.dumps(frame))
        except (TimeoutError, WebSocketException, OSError):
            return False
        return True
