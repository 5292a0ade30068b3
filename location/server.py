"""gRPC servicer of rideshare.location.v1.LocationService: proto <-> domain, errors -> codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from location import domain
from location.domain import (
    AvailabilityConflictError,
    InvalidArgumentError,
    LocationError,
    Position,
    UnknownDriverError,
)
from location.events import PositionFeed
from location.store import LocationStore
from protos.location.v1 import location_pb2, location_pb2_grpc
from rideshare.grpc_errors import StatusTable, abort_with
from rideshare.settings import env_float, env_int, env_str

__all__ = ["LocationServicer", "LocationSettings"]

logger = logging.getLogger(__name__)

# Rejections listed in one ReportPositions summary; `rejected` still counts all of them.
MAX_LISTED_REJECTIONS = 100

ERRORS: StatusTable = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownDriverError: grpc.StatusCode.NOT_FOUND,
    AvailabilityConflictError: grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass(frozen=True)
class LocationSettings:
    """The location service's own rules (RIDESHARE_DRIVER_STALE_S and friends)."""

    stale_s: float = 30.0
    max_future_s: float = 30.0
    watch_queue: int = 256
    sweep_interval_s: float = 1.0
    consumer_name: str = "location"  # the durable JetStream consumer all copies share
    # Longer than any offer lives (RIDESHARE_OFFER_TIMEOUT_S): an older OFFERED hold was left
    # by a dispatcher that died, and the driver is released.
    offer_hold_max_s: float = 120.0
    # The systems of record availability is rebuilt from when Redis comes back empty; an
    # empty address turns the rebuild off (tests of this service alone).
    driver_addr: str = "127.0.0.1:50052"
    trip_addr: str = "127.0.0.1:50053"
    rebuild_check_s: float = 1.0
    """How often each copy checks that Redis still holds the index (its marker)."""
    rebuild_timeout_s: float = 5.0
    """Deadline of each page read from the driver and trip services during a rebuild."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocationSettings:
        return cls(
            stale_s=env_float("RIDESHARE_DRIVER_STALE_S", 30.0, minimum=1.0, env=env),
            max_future_s=env_float("RIDESHARE_POSITION_MAX_FUTURE_S", 30.0, minimum=0.0, env=env),
            watch_queue=env_int("RIDESHARE_WATCH_QUEUE", 256, minimum=1, env=env),
            sweep_interval_s=env_float("RIDESHARE_STALE_SWEEP_S", 1.0, minimum=0.05, env=env),
            consumer_name=env_str("RIDESHARE_LOCATION_CONSUMER", "location", env=env),
            offer_hold_max_s=env_float("RIDESHARE_OFFER_HOLD_MAX_S", 120.0, minimum=1.0, env=env),
            driver_addr=env_str("RIDESHARE_DRIVER_ADDR", "127.0.0.1:50052", env=env),
            trip_addr=env_str("RIDESHARE_TRIP_ADDR", "127.0.0.1:50053", env=env),
            rebuild_check_s=env_float(
                "RIDESHARE_INDEX_CHECK_S", 1.0, minimum=0.05, maximum=60.0, env=env
            ),
            rebuild_timeout_s=env_float(
                "RIDESHARE_INDEX_REBUILD_TIMEOUT_S", 5.0, minimum=0.1, env=env
            ),
        )

    @property
    def stale_ms(self) -> int:
        return int(self.stale_s * 1000)

    @property
    def max_future_ms(self) -> int:
        return int(self.max_future_s * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_proto(position: Position) -> location_pb2.DriverPosition:
    return location_pb2.DriverPosition(
        driver_id=position.driver_id,
        lat=position.lat,
        lng=position.lng,
        heading=position.heading,
        speed_mps=position.speed_mps,
        accuracy_m=position.accuracy_m,
        client_ts_ms=position.client_ts_ms,
        server_ts_ms=position.server_ts_ms,
        availability=int(position.availability),  # type: ignore[arg-type]
        vehicle_class=position.vehicle_class,  # type: ignore[arg-type]
    )


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

    def _check(
        self, update: location_pb2.PositionUpdate, now: int
    ) -> tuple[domain.Reject, str] | None:
        return domain.check_position(
            update.driver_id,
            update.lat,
            update.lng,
            update.heading,
            update.speed_mps,
            update.accuracy_m,
            update.client_ts_ms,
            now_ms=now,
            max_future_ms=self._settings.max_future_ms,
        )

    async def _apply(self, updates: Sequence[location_pb2.PositionUpdate], now: int) -> list[int]:
        """Store well-formed updates and publish the ones applied. Per update: the driver's
        availability when applied, or 0 when it was out of order and dropped."""
        positions = [
            Position(
                u.driver_id,
                u.lat,
                u.lng,
                u.heading,
                u.speed_mps,
                u.accuracy_m,
                u.client_ts_ms,
                now,
            )
            for u in updates
        ]
        results = await self._store.apply(positions, now_ms=now)
        await self._feed.publish_applied(updates, results, server_ts_ms=now)
        return results

    async def ReportPosition(
        self,
        request: location_pb2.PositionUpdate,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.ReportResult:
        now = self._clock_ms()
        problem = self._check(request, now)
        if problem is not None:
            await abort_with(context, InvalidArgumentError(problem[1]), ERRORS)
        (availability,) = await self._apply([request], now)
        applied = availability != 0
        return location_pb2.ReportResult(
            accepted=applied,
            reason=(
                location_pb2.REJECT_REASON_UNSPECIFIED
                if applied
                else location_pb2.REJECT_REASON_OUT_OF_ORDER
            ),
            server_ts_ms=now,
        )

    async def ReportPositions(
        self,
        request_iterator: AsyncIterable[location_pb2.PositionBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.ReportPositionsSummary:
        summary = location_pb2.ReportPositionsSummary()
        # (index in the stream of the batch's first update, batch)
        pending: list[tuple[int, location_pb2.PositionBatch]] = []
        wake = asyncio.Event()
        reading = True

        def reject(index: int, driver_id: str, reason: int, detail: str) -> None:
            summary.rejected += 1
            if len(summary.rejections) < MAX_LISTED_REJECTIONS:
                summary.rejections.add(
                    index=index,
                    driver_id=driver_id,
                    reason=reason,
                    detail=detail,
                )

        async def read() -> None:
            nonlocal reading
            try:
                index = 0
                async for batch in request_iterator:
                    pending.append((index, batch))
                    index += len(batch.updates)
                    wake.set()
            finally:
                reading = False
                wake.set()

        # Whatever arrives while a write is in Redis forms the next write: writes grow with
        # load and a lone batch is written at once.
        async def write() -> None:
            nonlocal pending
            while reading or pending:
                await wake.wait()
                wake.clear()
                if not pending:
                    continue
                batches, pending = pending, []
                now = self._clock_ms()
                good: list[location_pb2.PositionUpdate] = []
                good_index: list[int] = []
                for first, batch in batches:
                    for offset, update in enumerate(batch.updates):
                        problem = self._check(update, now)
                        if problem is None:
                            good.append(update)
                            good_index.append(first + offset)
                        else:
                            reject(first + offset, update.driver_id, problem[0], problem[1])
                if not good:
                    continue
                results = await self._apply(good, now)
                for index, update, availability in zip(good_index, good, results, strict=True):
                    if availability:
                        summary.accepted += 1
                    else:
                        reject(
                            index,
                            update.driver_id,
                            location_pb2.REJECT_REASON_OUT_OF_ORDER,
                            "older than the stored position",
                        )

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())
        return summary

    async def NearestDrivers(
        self,
        request: location_pb2.NearestDriversRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.NearestDriversResponse:
        try:
            radius = domain.check_search(request.lat, request.lng, request.radius_m)
            limit = domain.clamp_limit(
                request.limit,
                default=domain.DEFAULT_SEARCH_LIMIT,
                maximum=domain.MAX_SEARCH_LIMIT,
            )
        except LocationError as exc:
            await abort_with(context, exc, ERRORS)
        now = self._clock_ms()
        hits = await self._store.nearest(
            request.lat,
            request.lng,
            radius_m=radius,
            limit=limit,
            vehicle_class=(
                int(request.vehicle_class) if request.HasField("vehicle_class") else None
            ),
            exclude=list(request.exclude_driver_ids),
            now_ms=now,
            stale_ms=self._settings.stale_ms,
        )
        response = location_pb2.NearestDriversResponse()
        for hit in hits:
            p = hit.position
            driver = response.drivers.add(
                driver_id=p.driver_id,
                distance_m=hit.distance_m,
                position_age_ms=max(0, now - p.server_ts_ms),
                heading=p.heading,
                vehicle_class=p.vehicle_class,
            )
            driver.position.lat = p.lat
            driver.position.lng = p.lng
        return response

    async def GetPosition(
        self,
        request: location_pb2.GetPositionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.DriverPosition:
        position = await self._store.get(request.driver_id) if request.driver_id else None
        if position is None:
            unknown = UnknownDriverError(f"no position for driver {request.driver_id!r}")
            await abort_with(context, unknown, ERRORS)
        return to_proto(position)

    async def WatchDriver(
        self,
        request: location_pb2.WatchDriverRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[location_pb2.DriverPosition]:
        if not request.driver_id:
            await abort_with(context, InvalidArgumentError("driver_id is required"), ERRORS)
        # Subscribe before reading the snapshot, so nothing falls between the two.
        async with self._feed.watch(request.driver_id) as updates:
            last_ts = 0
            snapshot = await self._store.get(request.driver_id)
            if snapshot is not None:
                last_ts = snapshot.client_ts_ms
                yield to_proto(snapshot)
            async for update in updates:
                if update.client_ts_ms > last_ts:  # a watcher never goes back in time
                    last_ts = update.client_ts_ms
                    yield update

    async def ReserveDriver(
        self,
        request: location_pb2.ReserveDriverRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.ReserveDriverResponse:
        try:
            _hold_request(request.driver_id, request.trip_id)
            await self._store.reserve(request.driver_id, request.trip_id)
        except LocationError as exc:
            await abort_with(context, exc, ERRORS)
        return location_pb2.ReserveDriverResponse()

    async def ReleaseDriver(
        self,
        request: location_pb2.ReleaseDriverRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.ReleaseDriverResponse:
        try:
            _hold_request(request.driver_id, request.trip_id)
        except LocationError as exc:
            await abort_with(context, exc, ERRORS)
        released = await self._store.release(request.driver_id, request.trip_id)
        return location_pb2.ReleaseDriverResponse(released=released)

    async def DriversInArea(
        self,
        request: location_pb2.DriversInAreaRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> location_pb2.DriversInAreaResponse:
        box = (request.min_lat, request.min_lng, request.max_lat, request.max_lng)
        try:
            domain.check_area(*box)
            limit = domain.clamp_limit(
                request.limit, default=domain.DEFAULT_AREA_LIMIT, maximum=domain.MAX_AREA_LIMIT
            )
        except LocationError as exc:
            await abort_with(context, exc, ERRORS)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        positions, truncated = await self._store.in_area(
            centre,
            domain.box_size_m(*box),
            limit=limit,
            now_ms=self._clock_ms(),
            stale_ms=self._settings.stale_ms,
        )
        return location_pb2.DriversInAreaResponse(
            drivers=[to_proto(p) for p in positions], truncated=truncated
        )


def _hold_request(driver_id: str, trip_id: str) -> None:
    if not driver_id:
        raise InvalidArgumentError("driver_id is required")
    if not trip_id:
        raise InvalidArgumentError("trip_id is required")
