"""gRPC servicer of rideshare.location.v1.LocationService: requests to the store and the live
feed. Conversion is in ``wire``; a domain error raised here becomes its status through
``ERRORS``, which the server's interceptor applies (``rideshare.grpc_server``), with the
callers ``ACCESS`` names. A driver reports only their own position."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from location import domain, wire
from location.domain import (
    AvailabilityConflictError,
    InvalidArgumentError,
    Reject,
    UnknownDriverError,
    UnknownTrackError,
)
from location.feed import PositionFeed
from location.metrics import BATCH_ITEMS, POSITIONS_SUPERSEDED
from location.settings import LocationSettings
from location.store import LocationStore
from protos.location.v1 import location_pb2, location_pb2_grpc
from rideshare.grpc_errors import StatusTable
from rideshare.identity import AccessTable, access_table, allow, require_acting_as

__all__ = ["ACCESS", "ERRORS", "LocationServicer", "now_ms"]

# Rejections listed in one ReportPositions summary; `rejected` still counts all of them.
MAX_LISTED_REJECTIONS = 100
_OLDER = "older than the stored position"

ERRORS: StatusTable = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownDriverError: grpc.StatusCode.NOT_FOUND,
    UnknownTrackError: grpc.StatusCode.NOT_FOUND,
    AvailabilityConflictError: grpc.StatusCode.FAILED_PRECONDITION,
}

ACCESS: AccessTable = access_table(
    location_pb2.DESCRIPTOR.services_by_name["LocationService"],
    {
        "ReportPosition": allow(users=("driver",)),
        # The edge's batches carry many drivers, each authenticated by the edge's socket.
        "ReportPositions": allow("edge"),
        "NearestDrivers": allow("trip"),
        "NearestDriversBatch": allow("trip"),
        # The edge: the snapshot of a rider's driver; trip: when a driver was last heard of.
        "GetPosition": allow("edge", "trip"),
        "WatchDriver": allow("edge"),
        "DriversInArea": allow(users=("admin",)),
        "ReserveDriver": allow("trip"),
        "ReserveDrivers": allow("trip"),
        "ReleaseDriver": allow("trip"),
        # The measured ride a fare is settled from.
        "GetTripDistance": allow("trip"),
    },
)
"""Who may call each method (rideshare.identity); the operator may call every one."""

Context = grpc.aio.ServicerContext[Any, Any]


def now_ms() -> int:
    """Wall-clock milliseconds: the service's receive time of positions."""
    return time.time_ns() // 1_000_000


class LocationServicer(location_pb2_grpc.LocationServiceServicer):
    """Validates, stores in Redis and fans every accepted update out on NATS."""

    def __init__(
        self,
        store: LocationStore,
        feed: PositionFeed,
        settings: LocationSettings,
        *,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._feed = feed
        self._settings = settings
        self._clock_ms = clock_ms

    async def _apply(self, updates: Sequence[location_pb2.PositionUpdate], now: int) -> list[int]:
        """Store well-formed updates and publish the ones applied. Per update: the driver's
        availability when applied, or 0 when it was out of order and dropped."""
        positions = wire.positions_from_updates(updates, server_ts_ms=now)
        results = await self._store.apply(positions, now_ms=now)
        await self._feed.publish_applied(updates, results, server_ts_ms=now)
        return results

    async def ReportPosition(
        self, request: location_pb2.PositionUpdate, context: Context
    ) -> location_pb2.ReportResult:
        now = self._clock_ms()
        problem = wire.check_update(request, now_ms=now, max_future_ms=self._settings.max_future_ms)
        if problem is not None:
            raise InvalidArgumentError(problem[1])
        require_acting_as(request.driver_id, role="driver", field="driver_id")
        (availability,) = await self._apply([request], now)
        return wire.report_result(applied=availability != 0, server_ts_ms=now)

    async def ReportPositions(
        self,
        request_iterator: AsyncIterable[location_pb2.PositionBatch],
        context: Context,
    ) -> location_pb2.ReportPositionsSummary:
        summary = location_pb2.ReportPositionsSummary()
        # Latest-wins (rideshare/latest.py explains why): driver -> (index in the stream, the
        # newest well-formed update) waiting for the next write. Whatever arrives while a
        # write is in Redis forms the next write, so writes grow with load and a lone batch
        # is written at once; under a backlog a driver's older updates never reach Redis.
        waiting: dict[str, tuple[int, location_pb2.PositionUpdate]] = {}
        wake = asyncio.Event()
        reading = True

        def reject(index: int, driver_id: str, reason: Reject, detail: str) -> None:
            summary.rejected += 1
            if len(summary.rejections) < MAX_LISTED_REJECTIONS:
                summary.rejections.add(
                    index=index,
                    driver_id=driver_id,
                    reason=wire.reject_to_proto(reason),
                    detail=detail,
                )

        async def read() -> None:
            nonlocal reading
            max_future_ms = self._settings.max_future_ms
            try:
                index = 0
                async for batch in request_iterator:
                    now = self._clock_ms()
                    superseded = 0
                    for update in batch.updates:
                        problem = wire.check_update(update, now_ms=now, max_future_ms=max_future_ms)
                        if problem is not None:
                            reject(index, update.driver_id, problem[0], problem[1])
                        elif (held := waiting.get(update.driver_id)) is None:
                            waiting[update.driver_id] = (index, update)
                        elif held[1].client_ts_ms > update.client_ts_ms:
                            reject(index, update.driver_id, Reject.OUT_OF_ORDER, _OLDER)
                        else:
                            superseded += 1
                            waiting[update.driver_id] = (index, update)
                        index += 1
                    if superseded:
                        summary.superseded += superseded
                        POSITIONS_SUPERSEDED.inc(superseded)
                    wake.set()
            finally:
                reading = False
                wake.set()

        async def write() -> None:
            nonlocal waiting
            while reading or waiting:
                await wake.wait()
                wake.clear()
                if not waiting:
                    continue
                taken, waiting = waiting, {}
                good = [update for _, update in taken.values()]
                results = await self._apply(good, self._clock_ms())
                for (index, update), availability in zip(taken.values(), results, strict=True):
                    if availability:
                        summary.accepted += 1
                    else:
                        reject(index, update.driver_id, Reject.OUT_OF_ORDER, _OLDER)

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())
        return summary

    async def NearestDrivers(
        self, request: location_pb2.NearestDriversRequest, context: Context
    ) -> location_pb2.NearestDriversResponse:
        search = wire.search_of(request)
        now = self._clock_ms()
        hits = await self._store.nearest(search, now_ms=now, stale_ms=self._settings.stale_ms)
        return wire.nearest_response(hits, now_ms=now)

    async def NearestDriversBatch(
        self, request: location_pb2.NearestDriversBatchRequest, context: Context
    ) -> location_pb2.NearestDriversBatchResponse:
        searches = domain.check_batch(request.searches, wire.search_of, field="searches")
        now = self._clock_ms()
        found = await self._store.nearest_many(
            searches, now_ms=now, stale_ms=self._settings.stale_ms
        )
        BATCH_ITEMS.labels("NearestDriversBatch", "searched").inc(len(searches))
        return location_pb2.NearestDriversBatchResponse(
            results=[wire.nearest_response(hits, now_ms=now) for hits in found]
        )

    async def GetPosition(
        self, request: location_pb2.GetPositionRequest, context: Context
    ) -> location_pb2.DriverPosition:
        driver_id = wire.driver_id_of(request)
        position = await self._store.get(driver_id)
        if position is None:
            raise UnknownDriverError(f"no position for driver {driver_id!r}")
        return wire.position_to_proto(position)

    async def WatchDriver(
        self, request: location_pb2.WatchDriverRequest, context: Context
    ) -> AsyncIterator[location_pb2.DriverPosition]:
        driver_id = wire.driver_id_of(request)
        # Subscribe before reading the snapshot, so nothing falls between the two.
        async with self._feed.watch(driver_id) as updates:
            last_ts = 0
            snapshot = await self._store.get(driver_id)
            if snapshot is not None:
                last_ts = snapshot.client_ts_ms
                yield wire.position_to_proto(snapshot)
            async for update in updates:
                if update.client_ts_ms > last_ts:  # a watcher never goes back in time
                    last_ts = update.client_ts_ms
                    yield update

    async def ReserveDriver(
        self, request: location_pb2.ReserveDriverRequest, context: Context
    ) -> location_pb2.ReserveDriverResponse:
        await self._store.reserve(*wire.hold_of(request))
        return location_pb2.ReserveDriverResponse()

    async def ReserveDrivers(
        self, request: location_pb2.ReserveDriversRequest, context: Context
    ) -> location_pb2.ReserveDriversResponse:
        holds = domain.check_batch(request.holds, wire.hold_of, field="holds")
        reserved = await self._store.reserve_many(holds)
        taken = sum(reserved)
        BATCH_ITEMS.labels("ReserveDrivers", "reserved").inc(taken)
        BATCH_ITEMS.labels("ReserveDrivers", "refused").inc(len(reserved) - taken)
        return location_pb2.ReserveDriversResponse(reserved=reserved)

    async def ReleaseDriver(
        self, request: location_pb2.ReleaseDriverRequest, context: Context
    ) -> location_pb2.ReleaseDriverResponse:
        released = await self._store.release(*wire.hold_of(request))
        return location_pb2.ReleaseDriverResponse(released=released)

    async def GetTripDistance(
        self, request: location_pb2.GetTripDistanceRequest, context: Context
    ) -> location_pb2.TripDistance:
        if not request.trip_id:
            raise InvalidArgumentError("trip_id is required")
        until = request.until_ms or self._clock_ms()
        if until < request.since_ms:
            raise InvalidArgumentError(f"until_ms {until} is before since_ms {request.since_ms}")
        fixes = await self._store.track(request.trip_id)
        if fixes is None:
            raise UnknownTrackError(f"no track recorded for trip {request.trip_id!r}")
        measured = domain.track_distance(
            fixes,
            since_ms=request.since_ms,
            until_ms=until,
            max_speed_mps=self._settings.track_max_speed_mps,
        )
        return wire.trip_distance_to_proto(measured)

    async def DriversInArea(
        self, request: location_pb2.DriversInAreaRequest, context: Context
    ) -> location_pb2.DriversInAreaResponse:
        box = (request.min_lat, request.min_lng, request.max_lat, request.max_lng)
        domain.check_area(*box)
        limit = domain.clamp_limit(
            request.limit, default=domain.DEFAULT_AREA_LIMIT, maximum=domain.MAX_AREA_LIMIT
        )
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        positions, truncated = await self._store.in_area(
            centre,
            domain.box_size_m(*box),
            limit=limit,
            now_ms=self._clock_ms(),
            stale_ms=self._settings.stale_ms,
        )
        return wire.area_response(positions, truncated=truncated)
