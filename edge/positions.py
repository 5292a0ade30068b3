"""Driver positions from every driver socket of this edge process, batched into ONE long-lived
``LocationService.ReportPositions`` client stream.

Sockets call :meth:`PositionBatcher.add` (no await, no I/O). The run loop writes whatever has
gathered as one ``PositionBatch`` every ``flush_s`` (a few ms), so the per-message cost of gRPC
is paid per batch, not per update. The stream is rotated every ``rotate_s`` (its summary is
logged) so it never runs into its deadline; when it breaks, it is reopened with a backoff and
the updates gathered meanwhile are kept up to the buffer bound (then the oldest are dropped:
a newer position supersedes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import grpc
import grpc.aio

from edge.metrics import POSITIONS_DROPPED, POSITIONS_FORWARDED
from edge.upstreams import LocationStub
from protos.location.v1 import location_pb2

__all__ = ["PositionBatcher"]

logger = logging.getLogger(__name__)

MAX_BATCH = 5_000


class PositionBatcher:
    def __init__(
        self,
        location: LocationStub,
        *,
        flush_s: float = 0.005,
        max_buffer: int = 100_000,
        rotate_s: float = 60.0,
        backoff_s: float = 0.5,
    ) -> None:
        self._location = location
        self._flush_s = flush_s
        self._rotate_s = rotate_s
        self._backoff_s = backoff_s
        self._buffer: deque[location_pb2.PositionUpdate] = deque(maxlen=max_buffer)
        self._wake = asyncio.Event()
        self.sent = 0
        self.connected = False

    def add(self, update: location_pb2.PositionUpdate) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            POSITIONS_DROPPED.inc()
        self._buffer.append(update)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open and feed it until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self._one_stream(stop)
            except grpc.aio.AioRpcError as exc:
                self.connected = False
                logger.warning("ReportPositions stream failed: %s", exc.code().name)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff_s):
                        await stop.wait()
            except Exception:
                self.connected = False
                logger.exception("ReportPositions stream failed unexpectedly")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff_s):
                        await stop.wait()

    async def _one_stream(self, stop: asyncio.Event) -> None:
        call = self._location.ReportPositions(timeout=self._rotate_s + 30.0)  # type: ignore[call-arg]
        loop = asyncio.get_running_loop()
        rotate_at = loop.time() + self._rotate_s
        try:
            while not stop.is_set() and loop.time() < rotate_at:
                if not self._buffer:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    continue
                batch = self._take()
                await call.write(location_pb2.PositionBatch(updates=batch))
                self.connected = True
                self.sent += len(batch)
                POSITIONS_FORWARDED.inc(len(batch))
                # Let updates gather for a few ms: one message per flush, not per update.
                await asyncio.sleep(self._flush_s)
            if self._buffer:  # flush what is left before rotating or stopping
                await call.write(location_pb2.PositionBatch(updates=self._take()))
            await call.done_writing()
            async with asyncio.timeout(5.0):
                summary = await call
            if summary.rejected:
                logger.info(
                    "ReportPositions: %d accepted, %d rejected (first: %s)",
                    summary.accepted,
                    summary.rejected,
                    summary.rejections[0].detail if summary.rejections else "-",
                )
        except BaseException:
            call.cancel()
            raise

    def _take(self) -> list[location_pb2.PositionUpdate]:
        buf = self._buffer
        n = min(len(buf), MAX_BATCH)
        return [buf.popleft() for _ in range(n)]
