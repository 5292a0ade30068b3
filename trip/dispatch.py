"""Dispatch: find a driver for each trip, one offer at a time, with its state in Postgres.

Any copy of the service can advance any trip, and a restart loses nothing: a trip is advanced
under ``SELECT ... FOR UPDATE SKIP LOCKED`` (one place at a time), and everything it needs to
go on (state, pending offer and its expiry, drivers already tried) is in its row. Triggers:

* ``kick(trip_id)`` right after RequestTrip commits, after a decline or a driver's cancel
  (in-process, for latency);
* a poller every ``dispatch_poll_s`` that picks up trips whose offer expired and trips in
  REQUESTED/DISPATCHING without an offer (whatever a crashed or stopped copy left behind).

Before offering, the driver is reserved for the trip in the location index with a
compare-and-set (``ReserveDriver``: AVAILABLE -> OFFERED), so concurrent dispatches of different
trips never pick the same driver; the ``offers`` table's unique indexes make it impossible even
if the index is wrong. That hold, and its release (``ReleaseDriver``) when the offer lapses or
does not commit, are the only availability changes trip makes: ON_TRIP and AVAILABLE are
applied by the location service from the trip events, and rebuilt by it from
``ListActiveAssignments`` when its Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

import grpc

from protos.location.v1 import location_pb2, location_pb2_grpc
from protos.trip.v1 import events_pb2
from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_client import make_channel
from rideshare.grpc_errors import log_round_failure
from trip import domain, wire
from trip.domain import GiveUp, OfferTo, Trip, TripState, Widen
from trip.errors import DriverUnavailableError
from trip.settings import TripSettings
from trip.store import Event, TripStore

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Dispatcher", "LocationClient", "Nearby"]

logger = logging.getLogger(__name__)

LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"

_NEAREST = "rideshare.location.v1.LocationService/NearestDrivers"
_RELEASE = "rideshare.location.v1.LocationService/ReleaseDriver"  # repeatable: names its trip


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Nearby:
    """One search hit: an available driver and their distance to the pickup."""

    driver_id: str
    distance_m: float


class LocationClient:
    """The trip service's calls to the location service, each with a deadline."""

    def __init__(self, target: str, *, timeout_s: float = 1.0) -> None:
        self._channel = make_channel(
            target, idempotent_methods=[_NEAREST, _RELEASE], default_timeout_s=timeout_s
        )
        self._stub: LocationStub = location_pb2_grpc.LocationServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def nearest(
        self,
        point: domain.LatLng,
        *,
        radius_m: float,
        limit: int,
        vehicle_class: domain.VehicleClass | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> list[Nearby]:
        """Available drivers within ``radius_m`` of ``point``, nearest first."""
        request = location_pb2.NearestDriversRequest(
            lat=point.lat,
            lng=point.lng,
            radius_m=radius_m,
            limit=limit,
            exclude_driver_ids=sorted(exclude),
        )
        if vehicle_class is not None:
            request.vehicle_class = wire.vehicle_class_to_proto(vehicle_class)
        reply = await self._stub.NearestDrivers(request)
        return [Nearby(d.driver_id, d.distance_m) for d in reply.drivers]

    async def reserve(self, driver_id: str, *, trip_id: str) -> bool:
        """Hold an AVAILABLE driver for ``trip_id``'s offer (AVAILABLE -> OFFERED); False when
        the driver is not available (any more)."""
        try:
            await self._stub.ReserveDriver(
                location_pb2.ReserveDriverRequest(driver_id=driver_id, trip_id=trip_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return False
            raise
        return True

    async def release(self, driver_id: str, *, trip_id: str) -> None:
        """End ``trip_id``'s hold on the driver (OFFERED -> AVAILABLE), best effort.

        Runs after the trip's transaction committed (or failed), so a failure must not fail
        the caller: the location service ends the hold from the trip's own event too
        (trip.offer_ended, trip.cancelled), and its sweeper releases any hold older than an
        offer can live.
        """
        try:
            await self._stub.ReleaseDriver(
                location_pb2.ReleaseDriverRequest(driver_id=driver_id, trip_id=trip_id)
            )
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning("could not release driver %s from trip %s: %r", driver_id, trip_id, exc)

    async def free(self, driver_id: str) -> None:
        """Nothing: the trip's ending event frees the driver in the location service."""


class Dispatcher:
    """Advances trips that look for a driver; see the module docstring."""

    def __init__(
        self,
        store: TripStore,
        location: LocationClient,
        settings: TripSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._location = location
        self._settings = settings
        self._plan = settings.plan()
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()

    def kick(self, trip_id: str) -> None:
        """Advance ``trip_id`` soon, in this process (duplicates while queued are dropped)."""
        if trip_id not in self._queued:
            self._queued.add(trip_id)
            self._queue.put_nowait(trip_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Work the kick queue and the poller until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            for i in range(self._settings.dispatch_concurrency):
                group.create_task(self._work(stop), name=f"dispatch-{i}")
            group.create_task(self._poll(stop), name="dispatch-poller")

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            trip_id = await _next_or_stop(self._queue, stop)
            if trip_id is None:
                return
            self._queued.discard(trip_id)
            try:
                await self.advance(trip_id)
            except Exception:
                reraise_if_cancelling()
                # The trip stays due; the poller brings it back.
                logger.exception("dispatch of trip %s failed; will retry", trip_id)

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                due = await self._store.due_for_dispatch(
                    now=self._clock(), limit=4 * self._settings.dispatch_concurrency
                )
                for trip_id in due:
                    self.kick(trip_id)
            except Exception as exc:
                reraise_if_cancelling()
                log_round_failure(logger, "dispatch poll failed", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.dispatch_poll_s):
                    await stop.wait()

    async def advance(self, trip_id: str) -> None:
        """Take the trip one step: start dispatch, end a lapsed offer, make the next offer
        or give up. Does nothing when the trip is not due or another worker holds it."""
        released: list[str] = []
        reserved: str | None = None
        try:
            async with self._store.transaction() as conn:
                trip = await self._store.lock_for_dispatch(conn, trip_id)
                if trip is None:
                    return
                now = self._clock()
                if trip.state is TripState.REQUESTED:
                    trip = await self._save(conn, trip, domain.dispatch(trip, now=now), [])
                pending = trip.offer
                if pending is not None:
                    if now < pending.expires_at:
                        return  # not due: the driver still has time to answer
                    trip = await self._save(
                        conn,
                        trip,
                        domain.expire_offer(trip, offer_id=pending.offer_id, now=now),
                        [wire.offer_ended(trip, pending, events_pb2.OFFER_END_REASON_EXPIRED)],
                    )
                    released.append(pending.driver_id)
                reserved = await self._offer_next(conn, trip, now)
        except BaseException:
            if reserved is not None:
                # Reserved in the index but the offer did not commit: give the driver back.
                await self._location.release(reserved, trip_id=trip_id)
            raise
        # Only once the expiry committed: until then the driver's offer still stands.
        for driver_id in released:
            await self._location.release(driver_id, trip_id=trip_id)

    async def _offer_next(self, conn: asyncpg.Connection, trip: Trip, now: datetime) -> str | None:
        """Offer ``trip`` to the nearest untried driver, widening the radius, or give up.
        Returns the driver reserved for the offer, if one was."""
        plan = self._plan
        radius_index = 0
        skip: set[str] = set()
        candidates = await self._search(trip, radius_index, skip)
        while True:
            step = domain.next_dispatch_step(
                trip,
                [c.driver_id for c in candidates],
                radius_index=radius_index,
                now=now,
                plan=plan,
                skip=skip,
            )
            if isinstance(step, Widen):
                radius_index = step.radius_index
                candidates = await self._search(trip, radius_index, skip)
                continue
            if isinstance(step, GiveUp):
                ended = domain.exhaust(trip, now=now, reason=step.reason)
                await self._save(
                    conn,
                    trip,
                    ended,
                    [wire.no_drivers(ended, max_radius_m=plan.radius_steps_m[radius_index])],
                )
                return None
            assert isinstance(step, OfferTo)
            driver_id = step.driver_id
            if not await self._location.reserve(driver_id, trip_id=trip.id):
                skip.add(driver_id)  # taken by another trip since the search
                continue
            offered = domain.offer(
                trip,
                offer_id=uuid.uuid4().hex,
                driver_id=driver_id,
                now=now,
                timeout=plan.offer_timeout,
            )
            distance = next(c.distance_m for c in candidates if c.driver_id == driver_id)
            try:
                async with conn.transaction():  # a savepoint: a refused offer keeps the tx
                    await self._store.save(
                        conn,
                        trip,
                        offered,
                        events=[wire.offered(offered, distance_to_pickup_m=distance)],
                    )
            except DriverUnavailableError:
                # The index said available, the database says this driver holds another
                # offer or trip: that one owns the OFFERED/ON_TRIP mark, leave it.
                skip.add(driver_id)
                continue
            except BaseException:
                await self._location.release(driver_id, trip_id=trip.id)
                raise
            return driver_id

    async def _search(self, trip: Trip, radius_index: int, skip: set[str]) -> list[Nearby]:
        return await self._location.nearest(
            trip.pickup,
            radius_m=self._plan.radius_steps_m[radius_index],
            limit=self._plan.candidates_per_search,
            vehicle_class=trip.vehicle_class,
            exclude=trip.excluded_driver_ids | skip,
        )

    async def _save(
        self, conn: asyncpg.Connection, before: Trip, after: Trip, events: list[Event]
    ) -> Trip:
        await self._store.save(conn, before, after, events=events)
        return after


async def _next_or_stop(queue: asyncio.Queue[str], stop: asyncio.Event) -> str | None:
    """The next queued item, or None once ``stop`` is set."""
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None
