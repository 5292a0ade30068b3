"""Driver positions from every driver socket of this edge process, batched into ONE long-lived
``LocationService.ReportPositions`` client stream.

Sockets call :meth:`PositionBatcher.add` (no await, no I/O). The run loop writes whatever has
gathered as one ``PositionBatch`` every ``flush_s`` (20 ms), so the per-message cost of gRPC
is paid per batch, not per update. A batch holds at most ``MAX_BATCH`` updates; a backlog is
written at once, batch after batch. The protobuf message of a position is built when its
batch is taken, so a position superseded while it waited costs no message.

Positions wait latest-wins (rideshare/latest.py): one per driver, the newest, in the order
the drivers first reported. When location is slow or the stream is down, a driver's newer
position replaces the waiting one (counted in ``edge_positions_conflated_total``) instead of
queueing behind it, so the backlog is at most one position per driver and the first batch
after a stall carries the newest positions, not the oldest. The bound is on drivers
(``max_buffer``); beyond it the driver that waited longest is dropped.

The stream is rotated every ``rotate_s`` so it never runs into its deadline: the next stream
opens at once and the old one's summary is awaited (and logged) aside. When a stream breaks,
it is reopened with a backoff and the positions gathered meanwhile wait as above.

The buffer is per edge process: each process batches the drivers whose sockets it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TypeAlias

import grpc
import grpc.aio

from edge.metrics import (
    POSITIONS_CONFLATED,
    POSITIONS_DROPPED,
    POSITIONS_FORWARDED,
    POSITIONS_RECEIVED,
)
from edge.upstreams import LocationStub
from edge.wire import Position
from protos.location.v1 import location_pb2
from rideshare.latest import Latest

__all__ = ["PositionBatcher"]

logger = logging.getLogger(__name__)

# ~175 KB on the wire. When the edge is short of CPU a write takes as long as the event loop
# takes to come round (measured 0.2-1.9 s per write, for 200 updates as for 2,000), so a
# write carries every waiting driver: with 500 a process holding 2,000 drivers refreshed each
# one every fourth write. Latest-wins bounds a batch by the drivers, not by a backlog.
MAX_BATCH = 2_500
SUMMARY_TIMEOUT_S = 5.0

ReportCall: TypeAlias = (
    "grpc.aio.StreamUnaryCall[location_pb2.PositionBatch, location_pb2.ReportPositionsSummary]"
)


class PositionBatcher:
    def __init__(
        self,
        location: LocationStub,
        *,
        flush_s: float = 0.02,
        max_buffer: int = 100_000,
        rotate_s: float = 60.0,
        backoff_s: float = 0.5,
    ) -> None:
        self._location = location
        self._flush_s = flush_s
        self._rotate_s = rotate_s
        self._backoff_s = backoff_s
        self._buffer: Latest[str, tuple[str, Position]] = Latest(max_keys=max_buffer)
        self._received = 0
        self._wake = asyncio.Event()

    def add(self, driver_id: str, position: Position) -> None:
        """Hold ``position`` until the next batch, in place of the driver's waiting one."""
        self._received += 1
        self._buffer.put(driver_id, (driver_id, position), position.ts_ms)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open and feed it until ``stop`` is set."""
        async with asyncio.TaskGroup() as closing:
            while not stop.is_set():
                try:
                    call = await self._one_stream(stop)
                except grpc.aio.AioRpcError as exc:
                    logger.warning("ReportPositions stream failed: %s", exc.code().name)
                except asyncio.InvalidStateError:
                    # A write after the server ended the call: location went away mid-stream.
                    logger.warning("ReportPositions stream ended by the location service")
                except Exception:
                    logger.exception("ReportPositions stream failed unexpectedly")
                else:
                    # The next stream opens at once; this one's summary is awaited aside, so
                    # rotating never holds positions back while location finishes the old one.
                    closing.create_task(self._summarise(call))
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff_s):
                        await stop.wait()

    async def _one_stream(self, stop: asyncio.Event) -> ReportCall:
        """Write batches on one stream until rotation or stop; returns it half-closed."""
        call: ReportCall = self._location.ReportPositions(  # type: ignore[call-arg]
            timeout=self._rotate_s + 30.0
        )
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
                taken_at = loop.time()
                batch = self._take()
                await call.write(location_pb2.PositionBatch(updates=batch))
                POSITIONS_FORWARDED.inc(len(batch))
                # Let updates gather for what is left of ``flush_s``: one message per flush,
                # not per update. A write that took longer gathered enough; sleeping anyway
                # would cost one more turn of a loop that is slow exactly then.
                gather_s = self._flush_s - (loop.time() - taken_at)
                if len(self._buffer) < MAX_BATCH and gather_s > 0:
                    await asyncio.sleep(gather_s)
            while stop.is_set() and self._buffer:  # flush what is left before stopping
                batch = self._take()
                await call.write(location_pb2.PositionBatch(updates=batch))
                POSITIONS_FORWARDED.inc(len(batch))
            await call.done_writing()
        except BaseException:
            call.cancel()
            raise
        return call

    async def _summarise(self, call: ReportCall) -> None:
        try:
            async with asyncio.timeout(SUMMARY_TIMEOUT_S):
                summary = await call
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            call.cancel()
            logger.warning("ReportPositions ended without a summary: %r", exc)
            return
        if summary.rejected:
            logger.info(
                "ReportPositions: %d accepted, %d rejected (first: %s)",
                summary.accepted,
                summary.rejected,
                summary.rejections[0].detail if summary.rejections else "-",
            )

    def _take(self) -> list[location_pb2.PositionUpdate]:
        # Counted per batch, not per position: a metrics call costs more than the dict put.
        superseded, dropped = self._buffer.counts()
        if superseded:
            POSITIONS_CONFLATED.inc(superseded)
        if dropped:
            POSITIONS_DROPPED.inc(dropped)
        POSITIONS_RECEIVED.inc(self._received)
        self._received = 0
        Update = location_pb2.PositionUpdate
        return [
            Update(
                driver_id=driver_id,
                lat=p.lat,
                lng=p.lng,
                heading=p.heading,
                speed_mps=p.speed_mps,
                accuracy_m=p.accuracy_m,
                client_ts_ms=p.ts_ms,
            )
            for driver_id, p in self._buffer.take(MAX_BATCH)
        ]
