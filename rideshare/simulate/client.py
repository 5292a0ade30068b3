"""How a simulated phone talks to the edge: HTTP calls with deadlines and the retries a real
app makes, and a WebSocket that stays connected.

Retries: 429, 503, 504 and a failed connection are waited out and tried again with
exponential backoff and full jitter (never sooner than Retry-After), up to ``retries`` times;
every call the apps make is safe to repeat (POST /v1/trips carries one Idempotency-Key for all
its attempts, and the others are reads, state settings or commands whose callers reconcile a
409 that follows an attempt of unknown outcome, :attr:`ApiError.after_unknown`).

Everything it sees goes into the run's ``Stats``; a 5xx that :func:`is_violation` calls
broken is kept for the invariants.
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

from rideshare.simulate.invariants import ServerError, is_violation
from rideshare.simulate.stats import Stats

__all__ = ["Api", "ApiError", "LiveSocket", "backoff_s", "now_ms"]

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 5.0
RETRY_BASE_S = 0.2
RETRY_CAP_S = 5.0
DEFAULT_RETRIES = 8
RETRYABLE_STATUSES = frozenset({429, 503, 504})
# Answers after which the request may or may not have taken effect.
UNKNOWN_OUTCOME_STATUSES = frozenset({503, 504})
# Routes where a 409/404 is a race a real app meets and handles, not a failure.
RACY_OPS = frozenset({"accept", "decline", "arrive", "start", "complete", "cancel", "rating"})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff_s(attempt: int, rng: random.Random | None = None, *, floor_s: float = 0.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): full jitter over an
    exponential ceiling (``RETRY_BASE_S * 2**attempt``, at most ``RETRY_CAP_S``), and never
    less than ``floor_s`` (the server's Retry-After, bounded)."""
    ceiling = min(RETRY_BASE_S * 2**attempt, RETRY_CAP_S)
    jitter = (rng or random).uniform(0.0, ceiling)
    return max(jitter, min(floor_s, MAX_RETRY_AFTER_S))


class ApiError(Exception):
    """A call that did not succeed: ``status`` 0 for a transport failure.

    ``after_unknown``: an earlier attempt of the same call ended without telling whether it
    took effect (503, 504, a lost connection), so a 409 now may be that attempt's success.
    """

    def __init__(
        self, op: str, status: int, code: str, message: str = "", *, after_unknown: bool = False
    ) -> None:
        super().__init__(f"{op}: {status} {code} {message}".strip())
        self.op = op
        self.status = status
        self.code = code
        self.after_unknown = after_unknown

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
        retries: int = DEFAULT_RETRIES,
    ) -> Any:
        """The JSON body of a 2xx answer (None for 204); ApiError otherwise.

        429, 503, 504 and transport failures are retried (see the module docstring); the
        last failure is counted in ``stats.errors``, the ones retried in ``stats.retries``.
        """
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        attempt = 0
        unknown = False  # an earlier attempt may have taken effect
        while True:
            attempt += 1
            floor_s = 0.0
            try:
                r = await self.http.request(method, path, json=body, headers=h)
            except httpx.TimeoutException:
                status, code, message = 0, "timeout", ""
            except httpx.TransportError as exc:
                status, code, message = 0, type(exc).__name__, ""
            else:
                if r.is_success:
                    return None if r.status_code == 204 or not r.content else r.json()
                status, code, message = r.status_code, _error_code(r), _error_message(r)
                has_retry_after = "retry-after" in r.headers
                if status >= 500:
                    self.stats.note_5xx(method, route or path, status, code)
                if is_violation(status, retry_after=has_retry_after):
                    self.server_errors.append(ServerError(method, route or path, status, code))
                if has_retry_after:
                    floor_s = _retry_after(r)
            label = f"{op} {status} {code}" if status else f"{op} {code}"
            retryable = status == 0 or status in RETRYABLE_STATUSES
            if retryable and attempt <= retries:
                self.stats.retries[label] += 1
                unknown = unknown or status == 0 or status in UNKNOWN_OUTCOME_STATUSES
                await asyncio.sleep(backoff_s(attempt, floor_s=floor_s))
                continue
            if status in (404, 409) and (op in RACY_OPS or unknown):
                self.stats.conflicts[label] += 1
            else:
                self.stats.errors[label] += 1
            raise ApiError(op, status, code, message, after_unknown=unknown)

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
    ``silence_s`` without any frame (the edge pings every 4 s, edge/wire.py; 7 s is one missed
    ping and some slack), and the edge sends a snapshot first on every (re)connect."""

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
            except Exception as exc:  # a bug in a frame handler: count it, reconnect
                logger.debug("socket %s failed", self._url, exc_info=True)
                self._stats.crashes[f"ws {type(exc).__name__}"] += 1
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
        receiving: asyncio.Future[Any] | None = None
        try:
            while True:
                receiving = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {receiving, stopping},
                    timeout=self._silence_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    return
                if not done:
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
            if receiving is not None:
                # However this ends (stop, silence, our own cancellation), the pending recv is
                # cancelled and its outcome consumed: a socket closed later (1011, 1006) must
                # not surface as "Task exception was never retrieved".
                receiving.cancel()
                receiving.add_done_callback(_consume)

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


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
