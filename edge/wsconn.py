"""The outgoing side of one WebSocket: a bounded queue that never blocks the edge.

Producers (trip events, position streams, heartbeats) call :meth:`Connection.send`, which only
appends to a deque. When the queue is full the oldest droppable frame is dropped; if nothing
is droppable the client is too slow to serve and the socket is closed (1008). One writer task
per socket drains the queue.

Frames that a newer one of the same kind supersedes (a driver's position, the heartbeat) are
sent with a key (:meth:`Connection.send_latest`) and wait latest-wins, one per key
(rideshare/latest.py): a socket that falls behind gets the newest position when it catches
up, never a queue of stale ones, and such frames never fill the queue. The writer sends the
queued frames first, then the keyed ones. The queue lives in the process that holds the
socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from edge.auth import Principal
from edge.metrics import WS_FRAMES_CONFLATED, WS_FRAMES_DROPPED
from edge.wire import CLOSE_SLOW_CONSUMER
from rideshare.latest import Latest

__all__ = ["Connection"]

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0


class Connection:
    """One authenticated socket: who it is and what is waiting to be sent to it."""

    __slots__ = (
        "__weakref__",
        "_close_code",
        "_close_reason",
        "_closed",
        "_latest",
        "_max_queue",
        "_queue",
        "_wake",
        "opened_at",
        "principal",
        "trip_versions",
        "ws",
    )

    def __init__(self, ws: WebSocket, principal: Principal, *, max_queue: int) -> None:
        self.ws = ws
        self.principal = principal
        self._max_queue = max_queue
        self._queue: deque[tuple[bool, str]] = deque()
        # A handful of keys per socket (its driver's position, the ping): never near the bound.
        self._latest: Latest[str, str] = Latest(max_keys=max(8, max_queue))
        self._wake = asyncio.Event()
        self._closed = False
        self._close_code = 1000
        self._close_reason = ""
        self.opened_at = time.monotonic()
        # trip id -> highest trip version sent, so an older read never overwrites a newer one
        self.trip_versions: dict[str, int] = {}

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, frame: dict[str, Any], *, droppable: bool = False) -> None:
        self.send_text(json.dumps(frame, separators=(",", ":"), default=str), droppable=droppable)

    def send_text(self, text: str, *, droppable: bool = False) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._max_queue and not self._drop_one():
            if droppable:
                WS_FRAMES_DROPPED.inc()
                return
            logger.warning("closing slow WebSocket of %s: send queue full", self.principal.sub)
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: send queue full")
            return
        self._queue.append((droppable, text))
        self._wake.set()

    def send_latest(self, key: str, text: str, rank: int = 0) -> None:
        """Send ``text`` unless a newer frame of the same ``key`` replaces it before the
        writer gets to it; of two waiting, the higher ``rank`` (a fix's time) wins."""
        if self._closed:
            return
        self._latest.put(key, text, rank)
        self._wake.set()

    def _drop_one(self) -> bool:
        for i, (droppable, _) in enumerate(self._queue):
            if droppable:
                del self._queue[i]
                WS_FRAMES_DROPPED.inc()
                return True
        return False

    def trip_is_new(self, trip_id: str, version: int) -> bool:
        """True (and remembered) when ``version`` is newer than what this socket has seen."""
        if self.trip_versions.get(trip_id, -1) >= version:
            return False
        self.trip_versions[trip_id] = version
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop sending; the writer closes the socket with ``code`` and ``reason`` (frames
        queued are lost)."""
        if not self._closed:
            self._close_code = code
            self._close_reason = reason
        self._closed = True
        self._wake.set()

    async def write_loop(self) -> None:
        """Send queued frames until closed; returns when the socket is gone or closed."""
        ws = self.ws
        try:
            while True:
                while (self._queue or self._latest) and not self._closed:
                    if self._queue:
                        _, text = self._queue.popleft()
                    else:
                        text = self._latest.take(1)[0]
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await ws.send_text(text)
                superseded, _ = self._latest.counts()
                if superseded:
                    WS_FRAMES_CONFLATED.inc(superseded)
                if self._closed:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
            self._closed = True
            return
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(self._close_code, self._close_reason)
