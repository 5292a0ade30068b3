"""Driver positions from every driver socket of this edge process, batched into ONE long-lived
``LocationService.ReportPositions`` client stream.

Sockets call :meth:`PositionBatcher.add` (no await, no I/O). The run loop writes whatever has
gathered as one ``PositionBatch`` every ``flush_s`` (a few ms), so the per-message cost of gRPC
is paid per batch, not per update. A batch holds at most ``MAX_BATCH`` updates and a backlog
is written at once, batch after batch: one huge message must cross HTTP/2 flow control in
many window-sized steps, each waiting on both event loops, so after a stall big batches were
slower per update than small ones and the backlog fed itself (measured under load: 5,000-update
writes took 0.2-4.5 s each, 500-update writes 5-40 ms).

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
from protos.location.v1 import location_pb2
from rideshare.latest import Latest

__all__ = ["PositionBatcher"]

logger = logging.getLogger(__name__)

# ~35 KB on the wire: under HTTP/2's initial 64 KiB window, so one write is one round trip.
MAX_BATCH = 500
SUMMARY_TIMEOUT_S = 5.0

ReportCall: TypeAlias = (
    "grpc.aio.StreamUnaryCall[location_pb2.PositionBatch, location_pb2.ReportPositionsSummary]"
)


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
        self._buffer: Latest[str, location_pb2.PositionUpdate] = Latest(max_keys=max_buffer)
        self._received = 0
        self._wake = asyncio.Event()

    def add(self, update: location_pb2.PositionUpdate) -> None:
        """Hold ``update`` until the next batch, in place of the driver's waiting one."""
        self._received += 1
        self._buffer.put(update.driver_id, update, update.client_ts_ms)
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
                batch = self._take()
                await call.write(location_pb2.PositionBatch(updates=batch))
                POSITIONS_FORWARDED.inc(len(batch))
                if len(self._buffer) < MAX_BATCH:
                    # Let updates gather for a few ms: one message per flush, not per update.
                    await asyncio.sleep(self._flush_s)
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
        return self._buffer.take(MAX_BATCH)
