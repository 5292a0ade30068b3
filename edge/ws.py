"""The two WebSockets: ``/v1/ws/driver`` (positions in; offers, trips, notifications out) and
``/v1/ws/rider`` (trips, the assigned driver's position, notifications out). Message formats
and close codes: edge/wire.py.

Limits (the handshake's rate limit is edge/middleware.py's):
- a token given in the first message takes from its user's rate bucket then (4429 if empty);
- a user holds at most ``ws_max_per_user`` sockets: a newer one closes the oldest (4409), at
  once on this process, and within about half a second on another worker or edge copy
  (counted in Valkey: edge/usercap.py; per process while Valkey is away);
- frames beyond the message rate are dropped with an error frame; a socket that keeps on
  (``ws_flood_frames`` excess frames, forgiven at FLOOD_FORGIVE_PER_S) is closed with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from edge import wire
from edge.auth import AuthError, Principal, decode_token
from edge.context import EdgeContext
from edge.metrics import RATE_LIMITED, WS_POLICY_CLOSES
from edge.middleware import user_bucket
from edge.ratelimit import TokenBucket
from edge.wsconn import Connection

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()

AUTH_TIMEOUT_S = 5.0
# Excess frames a socket is forgiven per second: a burst now and then is throttled, a socket
# that stays over its rate runs out of forgiveness within seconds.
FLOOD_FORGIVE_PER_S = 1.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _authenticate(ws: WebSocket, ctx: EdgeContext, role: str) -> Principal | None:
    """The socket's principal from ?token= or a first auth message; None after closing it."""
    token = ws.query_params.get("token")
    in_message = token is None
    if token is None:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                text = await ws.receive_text()
            frame = wire.parse_frame(text, max_bytes=ctx.settings.ws_max_message_bytes)
        except (TimeoutError, wire.FrameError, WebSocketDisconnect, KeyError):
            frame = {}
        if frame.get("type") == "auth" and isinstance(frame.get("token"), str):
            token = frame["token"]
    try:
        if token is None:
            raise AuthError('send ?token= or a first {"type": "auth", "token"} message')
        principal = decode_token(ctx.settings.jwt_secret, token)
    except AuthError as exc:
        await _refuse(ws, wire.CLOSE_UNAUTHENTICATED, "unauthenticated", str(exc))
        return None
    if principal.role != role:
        await _refuse(ws, wire.CLOSE_FORBIDDEN, "permission_denied", f"this socket is for {role}s")
        return None
    # A ?token= was counted with the handshake; one in a message only now.
    if in_message and await ctx.limiter.take([user_bucket(ctx.settings, principal.sub)]):
        RATE_LIMITED.inc()
        WS_POLICY_CLOSES.labels("rate_limited").inc()
        await _refuse(ws, wire.CLOSE_RATE_LIMITED, "rate_limited", "too many requests; retry later")
        return None
    return principal


async def _refuse(ws: WebSocket, code: int, error: str, message: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await ws.send_json(wire.error_frame(error, message))
        await ws.close(code)


def _make_room(ctx: EdgeContext, sub: str) -> None:
    """Close the user's oldest sockets so that one more fits under the cap. Synchronous, so
    no other handshake of the user runs between the count and the new socket's register."""
    open_ = sorted((c for c in ctx.hub.connections(sub) if not c.closed), key=lambda c: c.opened_at)
    for old in open_[: max(0, len(open_) - ctx.settings.ws_max_per_user + 1)]:
        WS_POLICY_CLOSES.labels("replaced").inc()
        old.close(wire.CLOSE_REPLACED, "replaced by a newer socket of the same user")


async def _serve(ws: WebSocket, role: str) -> None:
    ctx: EdgeContext = ws.app.state.ctx
    await ws.accept()
    principal = await _authenticate(ws, ctx, role)
    if principal is None:
        return
    settings = ctx.settings
    _make_room(ctx, principal.sub)
    conn = Connection(ws, principal, max_queue=settings.ws_send_queue)
    now = time.monotonic()
    limit = TokenBucket(settings.ws_msgs_per_s, settings.ws_msgs_burst, now)
    excess = TokenBucket(FLOOD_FORGIVE_PER_S, settings.ws_flood_frames, now)
    writer = asyncio.create_task(conn.write_loop(), name=f"ws-writer-{principal.sub}")
    try:
        await ctx.hub.register(conn)
        await ctx.user_sockets.admit(conn)
        # The frames are read in a task of their own: awaited here, each message would resume
        # this coroutine through every frame of the ASGI stack above it (a dozen middleware
        # and routing layers), a cost paid per position; the task resumes only its own.
        reader = asyncio.create_task(
            read_frames(
                ws,
                conn,
                limit=limit,
                excess=excess,
                max_bytes=ctx.settings.ws_max_message_bytes,
                handle=functools.partial(_handle, ctx, principal),
                who=principal.sub,
            ),
            name=f"ws-reader-{principal.sub}",
        )
        try:
            await reader
        finally:
            reader.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        conn.close(1001 if ws.application_state == WebSocketState.CONNECTED else 1000)
        await ctx.hub.unregister(conn)
        await ctx.user_sockets.release(conn)
        # The writer closes the socket (or notices it is gone) promptly; bound it anyway.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(2.0):
                await writer
        writer.cancel()


FrameHandler = Callable[[dict[str, object]], None]
"""What a socket does with one parsed client frame; raises wire.FrameError to refuse it."""


async def read_frames(
    ws: WebSocket,
    conn: Connection,
    *,
    limit: TokenBucket,
    excess: TokenBucket,
    max_bytes: int,
    handle: FrameHandler,
    who: str,
) -> None:
    """Read the client's frames until it leaves or the socket is closed (every socket kind's
    receive loop). Each frame within ``limit`` is parsed and handed to ``handle``; a bad
    frame, or one ``handle`` refuses, gets an error frame back. Past ``limit`` a frame gets
    a rate_limited error frame, and past ``excess`` too the socket is closed (flooding)."""
    while not conn.closed:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        now = time.monotonic()
        if not limit.take(now):
            if not excess.take(now):
                logger.warning("closing WebSocket of %s: message flood", who)
                WS_POLICY_CLOSES.labels("flooding").inc()
                conn.close(wire.CLOSE_FLOODING, "message rate exceeded")
                return
            conn.send(
                wire.error_frame("rate_limited", "too many messages; slow down"), droppable=True
            )
            continue
        try:
            handle(wire.parse_frame(data, max_bytes=max_bytes))
        except wire.FrameError as exc:
            conn.send(wire.error_frame(exc.code, exc.message))


def _handle(ctx: EdgeContext, principal: Principal, frame: dict[str, object]) -> None:
    kind = frame["type"]
    if kind in ("pong", "auth"):
        return
    if kind == "position" and principal.role == "driver":
        ctx.positions.add(principal.sub, wire.parse_position(frame, now_ms=_now_ms()))
        return
    raise wire.FrameError("unknown_type", f"unknown message type {kind!r}")


@router.websocket("/v1/ws/driver")
async def driver_socket(ws: WebSocket) -> None:
    await _serve(ws, "driver")


@router.websocket("/v1/ws/rider")
async def rider_socket(ws: WebSocket) -> None:
    await _serve(ws, "rider")
