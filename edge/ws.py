"""The two WebSockets: ``/v1/ws/driver`` (positions in; offers, trips, notifications out) and
``/v1/ws/rider`` (trips, the assigned driver's position, notifications out). Message formats:
edge/wire.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from edge import wire
from edge.auth import AuthError, Principal, decode_token
from edge.context import EdgeContext
from edge.ratelimit import TokenBucket
from edge.wsconn import Connection
from protos.location.v1 import location_pb2

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()

AUTH_TIMEOUT_S = 5.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _authenticate(ws: WebSocket, ctx: EdgeContext, role: str) -> Principal | None:
    """The socket's principal from ?token= or a first auth message; None after closing it."""
    token = ws.query_params.get("token")
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
        await _refuse(ws, CLOSE_UNAUTHENTICATED, "unauthenticated", str(exc))
        return None
    if principal.role != role:
        await _refuse(ws, CLOSE_FORBIDDEN, "permission_denied", f"this socket is for {role}s")
        return None
    return principal


async def _refuse(ws: WebSocket, code: int, error: str, message: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await ws.send_json(wire.error_frame(error, message))
        await ws.close(code)


async def _serve(ws: WebSocket, role: str) -> None:
    ctx: EdgeContext = ws.app.state.ctx
    await ws.accept()
    principal = await _authenticate(ws, ctx, role)
    if principal is None:
        return
    settings = ctx.settings
    conn = Connection(ws, principal, max_queue=settings.ws_send_queue)
    limit = TokenBucket(settings.ws_msgs_per_s, settings.ws_msgs_burst, time.monotonic())
    writer = asyncio.create_task(conn.write_loop(), name=f"ws-writer-{principal.sub}")
    try:
        await ctx.hub.register(conn)
        while not conn.closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if not limit.take(time.monotonic()):
                conn.send(
                    wire.error_frame("rate_limited", "too many messages; slow down"), droppable=True
                )
                continue
            try:
                frame = wire.parse_frame(data, max_bytes=settings.ws_max_message_bytes)
                _handle(ctx, principal, frame)
            except wire.FrameError as exc:
                conn.send(wire.error_frame(exc.code, exc.message))
    except WebSocketDisconnect:
        pass
    finally:
        conn.close(1001 if ws.application_state == WebSocketState.CONNECTED else 1000)
        await ctx.hub.unregister(conn)
        # The writer closes the socket (or notices it is gone) promptly; bound it anyway.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(2.0):
                await writer
        writer.cancel()


def _handle(ctx: EdgeContext, principal: Principal, frame: dict[str, object]) -> None:
    kind = frame["type"]
    if kind in ("pong", "auth"):
        return
    if kind == "position" and principal.role == "driver":
        p = wire.parse_position(frame, now_ms=_now_ms())
        ctx.positions.add(
            location_pb2.PositionUpdate(
                driver_id=principal.sub,
                lat=p.lat,
                lng=p.lng,
                heading=p.heading,
                speed_mps=p.speed_mps,
                accuracy_m=p.accuracy_m,
                client_ts_ms=p.ts_ms,
            )
        )
        return
    raise wire.FrameError("unknown_type", f"unknown message type {kind!r}")


@router.websocket("/v1/ws/driver")
async def driver_socket(ws: WebSocket) -> None:
    await _serve(ws, "driver")


@router.websocket("/v1/ws/rider")
async def rider_socket(ws: WebSocket) -> None:
    await _serve(ws, "rider")
