"""``/v1/ws/viewer``: the live map of the drivers inside a box, for operators (admin tokens).

A snapshot first (``LocationService.DriversInArea``, read as the admin), then deltas:
drivers that appeared in the box, moved inside it, or left it. Frame formats: edge/wire.py.

Where the positions come from: the location service publishes every position it applies on
core NATS ``location.driver.<id>``. While at least one viewer is connected, this process
holds ONE subscription on ``location.driver.*`` and offers each position to every viewer
socket it holds, which keeps the newest per driver until its next frame (latest-wins: under
load a viewer gets fewer, fresher frames, never a backlog). That subscription costs the
process the decoding of every applied position in the city (a few microseconds each) for as
long as a map is open; with no viewer it is not held. Its NATS queue is bounded
(``FEED_PENDING``): if the process falls behind, NATS drops the oldest positions, and the
next ones supersede them anyway.

The subscription is taken before the snapshot is read, so no position falls between them;
a live position older than the snapshot's for the same driver is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, WebSocket
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.websockets import WebSocketDisconnect, WebSocketState

from edge import wire
from edge.auth import Principal
from edge.context import EdgeContext
from edge.errors import ApiError
from edge.ratelimit import TokenBucket
from edge.upstreams import LocationStub
from edge.ws import FLOOD_FORGIVE_PER_S, _authenticate, _refuse, read_frames
from edge.wsconn import Connection
from protos.events import LOCATION_DRIVER_WILDCARD
from protos.location.v1 import location_pb2
from rideshare.identity import User, acting_as

__all__ = ["STALE_MS", "ViewerFeed", "ViewerView", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()

# A driver shown but silent this long has left the map: the location service's own default
# staleness (RIDESHARE_DRIVER_STALE_S), after which DriversInArea no longer returns them.
STALE_MS = 30_000
FEED_PENDING = 20_000
SNAPSHOT_RETRY_S = 2.0


@dataclass
class ViewerView:
    """What one viewer socket shows and what it has not been sent yet. Pure: no I/O.

    ``shown`` maps each driver on the viewer's map to (server_ts_ms of the position it was
    sent, when this process last heard of the driver); ``pending`` holds the newest position
    of each driver that changed since the last frame, or None for a driver that left.
    """

    box: wire.Bbox
    max_drivers: int
    shown: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: dict[str, location_pb2.DriverPosition | None] = field(default_factory=dict)

    def offer(self, p: location_pb2.DriverPosition, now_ms: int) -> None:
        """A live position: kept (superseding an older one) when inside the box, a "left"
        when a shown driver is now outside it."""
        driver_id = p.driver_id
        if p in self.box:
            pending = self.pending.get(driver_id)
            if pending is None or pending.server_ts_ms <= p.server_ts_ms:
                self.pending[driver_id] = p
        elif driver_id in self.shown:
            self.pending[driver_id] = None
        seen = self.shown.get(driver_id)
        if seen is not None:
            self.shown[driver_id] = (seen[0], now_ms)

    def move(self, box: wire.Bbox) -> None:
        """A new box: what was gathered is dropped; a snapshot of the new box follows."""
        self.box = box
        self.pending.clear()

    def reset(self, drivers: list[location_pb2.DriverPosition], now_ms: int) -> None:
        """The snapshot just sent is what the viewer shows; live positions gathered while it
        was read stay pending, and go out if they are newer."""
        self.shown = {p.driver_id: (p.server_ts_ms, now_ms) for p in drivers}

    def expire(self, now_ms: int) -> None:
        """Shown drivers silent for STALE_MS leave the map."""
        for driver_id, (_, heard) in self.shown.items():
            if now_ms - heard >= STALE_MS:
                self.pending[driver_id] = None

    def take(
        self,
    ) -> tuple[list[location_pb2.DriverPosition], list[location_pb2.DriverPosition], list[str]]:
        """(appeared, moved, left) since the last frame; the view then shows them."""
        appeared: list[location_pb2.DriverPosition] = []
        moved: list[location_pb2.DriverPosition] = []
        left: list[str] = []
        for driver_id, p in self.pending.items():
            seen = self.shown.get(driver_id)
            if p is None:
                if seen is not None:
                    del self.shown[driver_id]
                    left.append(driver_id)
            elif seen is None:
                if len(self.shown) < self.max_drivers:
                    self.shown[driver_id] = (p.server_ts_ms, _heard(p))
                    appeared.append(p)
            elif p.server_ts_ms > seen[0]:
                self.shown[driver_id] = (p.server_ts_ms, max(seen[1], _heard(p)))
                moved.append(p)
        self.pending.clear()
        return appeared, moved, left


def _heard(p: location_pb2.DriverPosition) -> int:
    return p.server_ts_ms or _now_ms()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class _Viewer:
    conn: Connection
    view: ViewerView
    resnap: asyncio.Event = field(default_factory=asyncio.Event)


class ViewerFeed:
    """This process's viewer sockets and the one NATS subscription that feeds them."""

    def __init__(self, nc: NATS, location: LocationStub) -> None:
        self._nc = nc
        self._location = location
        self._viewers: set[_Viewer] = set()
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; then close every viewer socket with 1001 (the edge is stopping)."""
        await stop.wait()
        for viewer in list(self._viewers):
            viewer.conn.close(1001)

    async def _attach(self, viewer: _Viewer) -> None:
        async with self._lock:
            self._viewers.add(viewer)
            if self._sub is None:
                self._sub = await self._nc.subscribe(
                    LOCATION_DRIVER_WILDCARD, cb=self._on_position, pending_msgs_limit=FEED_PENDING
                )

    async def _detach(self, viewer: _Viewer) -> None:
        async with self._lock:
            self._viewers.discard(viewer)
            if not self._viewers and self._sub is not None:
                sub, self._sub = self._sub, None
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_position(self, msg: Msg) -> None:
        try:
            p = location_pb2.DriverPosition.FromString(msg.data)
        except Exception:
            logger.warning("undecodable position on %s", msg.subject)
            return
        now = _now_ms()
        for viewer in self._viewers:
            viewer.view.offer(p, now)

    async def serve(self, ws: WebSocket) -> None:
        ctx: EdgeContext = ws.app.state.ctx
        settings = ctx.settings
        await ws.accept()
        principal = await _authenticate(ws, ctx, "admin")
        if principal is None:
            return
        try:
            box = wire.parse_bbox(ws.query_params.get("bbox", wire.WORLD_BBOX))
        except wire.FrameError as exc:
            await _refuse(ws, wire.CLOSE_BAD_QUERY, exc.code, exc.message)
            return
        conn = Connection(ws, principal, max_queue=settings.ws_send_queue)
        viewer = _Viewer(conn, ViewerView(box, settings.viewer_max_drivers))
        viewer.resnap.set()
        writer = asyncio.create_task(conn.write_loop(), name=f"viewer-writer-{principal.sub}")
        feeder = asyncio.create_task(self._feed(viewer, principal, ctx))
        try:
            await self._attach(viewer)
            await self._receive(ws, viewer, ctx)
        except WebSocketDisconnect:
            pass
        finally:
            await self._detach(viewer)
            feeder.cancel()
            conn.close(1001 if ws.application_state == WebSocketState.CONNECTED else 1000)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await writer
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def _receive(self, ws: WebSocket, viewer: _Viewer, ctx: EdgeContext) -> None:
        settings = ctx.settings
        now = time.monotonic()

        def handle(frame: dict[str, object]) -> None:
            kind = frame["type"]
            if kind == "bbox":
                viewer.view.move(wire.parse_bbox(frame.get("bbox")))
                viewer.resnap.set()
            elif kind not in ("pong", "auth"):
                raise wire.FrameError("unknown_type", f"unknown message type {kind!r}")

        await read_frames(
            ws,
            viewer.conn,
            limit=TokenBucket(settings.ws_msgs_per_s, settings.ws_msgs_burst, now),
            excess=TokenBucket(FLOOD_FORGIVE_PER_S, settings.ws_flood_frames, now),
            max_bytes=settings.ws_max_message_bytes,
            handle=handle,
            who="a map viewer",
        )

    async def _feed(self, viewer: _Viewer, principal: Principal, ctx: EdgeContext) -> None:
        """A snapshot whenever the box is new, else a delta frame at most every interval;
        a ping when nothing was sent for a ping interval."""
        settings = ctx.settings
        interval = 1.0 / settings.viewer_frames_per_s
        conn, view = viewer.conn, viewer.view
        last_sent = time.monotonic()
        while not conn.closed:
            if viewer.resnap.is_set():
                viewer.resnap.clear()
                if not await self._snapshot(viewer, principal):
                    viewer.resnap.set()
                    await asyncio.sleep(SNAPSHOT_RETRY_S)
                    continue
                last_sent = time.monotonic()
            else:
                now_ms = _now_ms()
                view.expire(now_ms)
                appeared, moved, left = view.take()
                if appeared or moved or left:
                    conn.send(wire.viewer_delta_frame(appeared, moved, left))
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= settings.ws_ping_interval_s:
                    conn.send_text(wire.ping_frame(now_ms), droppable=True)
                    last_sent = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await viewer.resnap.wait()

    async def _snapshot(self, viewer: _Viewer, principal: Principal) -> bool:
        box = viewer.view.box
        request = location_pb2.DriversInAreaRequest(
            min_lat=box.min_lat,
            min_lng=box.min_lng,
            max_lat=box.max_lat,
            max_lng=box.max_lng,
            limit=viewer.view.max_drivers,
        )
        try:
            with acting_as(User(principal.role, principal.sub)):
                reply = await self._location.DriversInArea(request)
        except ApiError as exc:
            viewer.conn.send(wire.error_frame(exc.code, exc.message))
            return False
        if viewer.view.box is not box:  # moved again meanwhile: the next snapshot follows
            return True
        drivers = list(reply.drivers)
        viewer.view.reset(drivers, _now_ms())
        viewer.conn.send(wire.viewer_snapshot_frame(box, drivers, truncated=reply.truncated))
        return True


@router.websocket("/v1/ws/viewer")
async def viewer_socket(ws: WebSocket) -> None:
    feed: ViewerFeed = ws.app.state.viewers
    await feed.serve(ws)
