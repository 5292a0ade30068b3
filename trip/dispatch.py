"""Dispatch: find a driver for each trip, with its state in Postgres.

A trip is offered to one driver at a time, or with parallel offers
(``RIDESHARE_DISPATCH_PARALLEL_OFFERS`` = K > 1) to the K nearest untried drivers at once, each
reserved in the location index and committed together in one transaction: the first accept
wins (``commands.accept`` ends the others: trip.offer_ended, accepted elsewhere), a decline
or an expiry ends only its own offer, and the next K go out when all of a batch have ended.

Any copy of the service can advance any trip, and a restart loses nothing: everything
dispatch needs to go on (state, pending offer and its expiry, drivers already tried) is in
the trip's row. Triggers:

* ``kick(trip_id)`` right after RequestTrip commits, after a decline or a driver's cancel
  (in-process, for latency);
* a poller every ``dispatch_poll_s`` that picks up trips whose offer expired and trips in
  REQUESTED/DISPATCHING without an offer (whatever a crashed or stopped copy left behind).

One step of a trip (``advance``) holds no lock and no transaction while it talks to the
location service; a slow or failing location service never blocks the rider's cancel or any
other command on the trip, nor holds a pooled connection. The step:

1. **claim**: one short transaction leases the trip to this step for ``dispatch_claim_s``
   (``TripStore.claim_for_dispatch``) and reads it. A trip claimed by another step, here or
   in another copy, is left alone, so two copies do not search and reserve drivers for one
   trip at once. The claim only saves work, so its commit does not wait for the disk;
2. **decide and reserve**, outside any transaction: start dispatch, end a lapsed offer, ask
   location for the nearest drivers, and hold the chosen one for the trip with a
   compare-and-set in the location index (``ReserveDriver``: AVAILABLE -> OFFERED), so
   concurrent steps of different trips never pick the same driver;
3. **commit** the offer (or NO_DRIVERS) with the trip's history and outbox events in one short
   transaction, version-checked (``UPDATE ... WHERE version=$2``) against the trip as read in
   1. The new version ends the claim: a claim holds only while the trip stays at the version
   it was taken on, so any write of the trip (a cancel too) ends it. The version check, and
   the one-offer-per-(trip, slot) unique index, are what make more than K offers of one trip
   at once impossible, claim or no claim (a claim can lapse under a stalled step). A step with
   nothing to commit ends its claim with a statement of its own.

Before the location calls this runs a claim (update, read) where a lock (lock, read, write
of DISPATCHING) used to be, and after them one short transaction where the tail of the long
one used to be, so the request -> offer path runs no more statements than before
(docs/PERFORMANCE.md has the measurements).

When the commit loses (the rider cancelled, the sweeper ended the trip, another step made an
offer after this claim lapsed), the reserved driver is released (``ReleaseDriver``, which only
ends this trip's hold, so repeating it is harmless) and the step starts over on the trip as it
is now, which mostly finds nothing left to do. When the database refuses the driver (the
``offers`` unique indexes: they hold another offer or a live trip, whatever the index said)
the next candidate is tried, and the hold is left to the offer or trip that owns the driver.

With a dispatch window (``RIDESHARE_DISPATCH_WINDOW_S`` > 0) a kicked trip waits for the
window's end, where ``trip.batching`` claims the window's trips, matches them together
(``trip.matcher``) and runs each one's step through ``advance_claimed`` with its ranked
candidates; the step offers those first, then goes on nearest-first. Every step that offers or
gives up records its round (``trip.explain``: the candidates, the excluded and why) in the
commit's transaction, for ExplainDispatch.

A copy that dies between reserve and commit leaves a hold in the index that no offer backs;
the location service's sweeper releases holds older than an offer can live
(``RIDESHARE_OFFER_HOLD_MAX_S``), and the trip's claim lapses after ``dispatch_claim_s``, when
another copy's poller takes the trip on. That hold, and its release when an offer lapses or
does not commit, are the only availability changes trip makes: ON_TRIP and AVAILABLE are
applied by the location service from the trip events, and rebuilt by it from
``ListActiveAssignments`` when its Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import grpc

from protos.location.v1 import location_pb2, location_pb2_grpc
from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_client import make_channel
from rideshare.grpc_errors import log_round_failure
from rideshare.identity import TokenSigner
from rideshare.lifecycle import next_or_stop
from trip import batching, domain, wire
from trip.batching import BatchWindow, Pick, Search
from trip.domain import (
    ConcurrencyError,
    DriverUnavailableError,
    GiveUp,
    Nearby,
    OfferEndReason,
    OfferTo,
    Trip,
    TripState,
    Widen,
)
from trip.explain import DispatchRound, RoundLog
from trip.matcher import CostModel, DriverHit, Reason
from trip.settings import TripSettings
from trip.store import TripStore
from trip.wire import Event

__all__ = ["Dispatcher", "LocationClient"]

logger = logging.getLogger(__name__)

LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"

_NEAREST = "rideshare.location.v1.LocationService/NearestDrivers"
_NEAREST_BATCH = "rideshare.location.v1.LocationService/NearestDriversBatch"
_RELEASE = "rideshare.location.v1.LocationService/ReleaseDriver"  # repeatable: names its trip
_TRIP_DISTANCE = "rideshare.location.v1.LocationService/GetTripDistance"

_ATTEMPTS = 3
# Per call of the batch methods (location takes up to 1,000): a window's searches answer
# with up to 50 drivers each, and gRPC refuses a reply over 4 MiB.
_SEARCHES_PER_CALL = 200
_HOLDS_PER_CALL = 1000
_DISPATCHABLE = frozenset({TripState.REQUESTED, TripState.DISPATCHING})

_Change = tuple[Trip, list[Event]]
"""One step of a trip: the trip after it, and its outbox events."""


@dataclass(frozen=True, slots=True)
class _FirstOffer:
    """A window's pick offered to its assigned driver, not yet held nor committed."""

    pick: Pick
    trip: Trip
    event: Event

    @property
    def offer(self) -> domain.Offer:
        return self.trip.offers[-1]

    @property
    def hold(self) -> tuple[str, str]:
        return self.offer.driver_id, self.trip.id


def utcnow() -> datetime:
    return datetime.now(UTC)


class LocationClient:
    """The trip service's calls to the location service, each with a deadline."""

    def __init__(
        self, target: str, *, timeout_s: float = 1.0, signer: TokenSigner | None = None
    ) -> None:
        self._channel = make_channel(
            target,
            idempotent_methods=[_NEAREST, _NEAREST_BATCH, _RELEASE, _TRIP_DISTANCE],
            default_timeout_s=timeout_s,
            signer=signer,
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
        request = wire.nearest_drivers_request(
            point, radius_m=radius_m, limit=limit, vehicle_class=vehicle_class, exclude=exclude
        )
        return wire.nearby_from_proto(await self._stub.NearestDrivers(request))

    async def drivers_around(self, searches: Sequence[Search]) -> list[list[DriverHit]]:
        """Available drivers, with their positions, around each of ``searches`` (a dispatch
        window's regions, ``trip.batching``): one call per 200 of them."""
        per_call = _SEARCHES_PER_CALL
        chunks = [searches[i : i + per_call] for i in range(0, len(searches), per_call)]
        answers = await asyncio.gather(*(self._search_batch(chunk) for chunk in chunks))
        return [hits for answer in answers for hits in answer]

    async def _search_batch(self, searches: Sequence[Search]) -> list[list[DriverHit]]:
        request = location_pb2.NearestDriversBatchRequest(
            searches=[
                wire.nearest_drivers_request(
                    s.point,
                    radius_m=s.radius_m,
                    limit=s.limit,
                    vehicle_class=s.vehicle_class,
                    exclude=frozenset(),
                )
                for s in searches
            ]
        )
        reply = await self._stub.NearestDriversBatch(request)
        if len(reply.results) != len(searches):
            raise RuntimeError(
                f"NearestDriversBatch answered {len(reply.results)} of {len(searches)} searches"
            )
        return [[batching.hit_from_proto(d) for d in r.drivers] for r in reply.results]

    async def reserve_many(self, holds: Sequence[tuple[str, str]]) -> list[bool]:
        """``reserve`` of several (driver id, trip id) pairs in one call (per 1,000): whether
        each driver is now held for its trip."""
        reserved: list[bool] = []
        for i in range(0, len(holds), _HOLDS_PER_CALL):
            chunk = holds[i : i + _HOLDS_PER_CALL]
            request = location_pb2.ReserveDriversRequest(
                holds=[location_pb2.ReserveDriverRequest(driver_id=d, trip_id=t) for d, t in chunk]
            )
            reply = await self._stub.ReserveDrivers(request)
            if len(reply.reserved) != len(chunk):
                raise RuntimeError(f"ReserveDrivers answered {len(reply.reserved)} of {len(chunk)}")
            reserved += reply.reserved
        return reserved

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

    async def trip_distance(
        self, trip_id: str, *, since: datetime, until: datetime, timeout_s: float
    ) -> domain.TrackMeasurement | None:
        """What the location service measured along the trip's recorded track between
        ``since`` and ``until``; None when it recorded no track for the trip. Any other
        failure (UNAVAILABLE, the deadline) raises: the caller decides what stands in."""
        request = wire.trip_distance_request(trip_id, since=since, until=until)
        try:
            reply = await self._stub.GetTripDistance(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return wire.track_from_proto(reply)

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


class Dispatcher:
    """Advances trips that look for a driver; see the module docstring."""

    def __init__(
        self,
        store: TripStore,
        location: LocationClient,
        settings: TripSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        flushed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``flushed`` returns once what was committed before the call is published
        (``OutboxRelay.flushed``): a dispatch window counts that in its length."""
        self._store = store
        self._location = location
        self._settings = settings
        self._plan = settings.plan()
        self._claim_for = timedelta(seconds=settings.dispatch_claim_s)
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._cost = settings.cost_model()
        self._window = BatchWindow(self, store, location, settings, clock=clock, flushed=flushed)

    @property
    def cost_model(self) -> CostModel:
        return self._cost

    def kick(self, trip_id: str, *, since: float | None = None) -> None:
        """Advance ``trip_id`` soon, in this process (duplicates while queued are dropped);
        with a dispatch window, at the window's end together with the window's other trips.
        ``since``: when (``time.monotonic()``) the rider's wait began, if earlier than now
        (a window opened by this trip closes a window after it)."""
        if self._window.enabled:
            self._window.add(trip_id, since=since)
        elif trip_id not in self._queued:
            self._queued.add(trip_id)
            self._queue.put_nowait(trip_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Work the kick queue and the poller until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            for i in range(self._settings.dispatch_concurrency):
                group.create_task(self._work(stop), name=f"dispatch-{i}")
            group.create_task(self._poll(stop), name="dispatch-poller")
            if self._window.enabled:
                group.create_task(self._window.run(stop), name="dispatch-window")

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            trip_id = await next_or_stop(self._queue, stop)
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
        or give up. Does nothing when the trip is not due or another step holds it."""
        claim = uuid.uuid4().hex
        now = self._clock()
        trip = await self._store.claim_for_dispatch(
            trip_id, claim=claim, now=now, until=now + self._claim_for
        )
        if trip is None:
            return
        await self.advance_claimed(trip, claim)

    async def advance_claimed(self, trip: Trip, claim: str, *, log: RoundLog | None = None) -> None:
        """``advance`` of a trip already claimed by ``claim``; ``log`` carries the candidates a
        window ranked for it (``trip.batching``), which the step offers first."""
        trip_id = trip.id
        committed = False
        try:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    committed = await self._step(trip, log)
                    return
                except ConcurrencyError:
                    if attempt == _ATTEMPTS:
                        raise
                # The trip changed under the step: look at it again as it is now.
                logger.info("trip %s changed during its dispatch step; looking again", trip_id)
                fresh = await self._store.find_trip(trip_id)
                if fresh is None or fresh.state not in _DISPATCHABLE:
                    return
                trip = fresh
                log = None  # the window's ranking was for the trip as it was
        finally:
            if not committed:  # a commit ends the claim: the trip's version moved on
                await self._end_claim(trip_id, claim)

    async def offer_assigned(self, picks: Sequence[Pick]) -> list[Pick]:
        """Offer each picked trip to the driver its window assigned it, all at once: one
        ReserveDrivers call for the holds and one transaction for the offers
        (``TripStore.save_first_offers``). The same holds and version-checked commit as a
        step of one trip, so the same guarantees.

        Returns the picks it did not offer (the driver was taken meanwhile, the trip changed,
        a call failed...), with nothing held for them: the caller runs their steps one by one
        (``advance_claimed``), which sorts each out. Parallel offers always go that way."""
        if self._plan.parallel_offers != 1:
            return list(picks)
        now = self._clock()
        ready: list[_FirstOffer] = []
        left: list[Pick] = []
        for pick in picks:
            first = self._first_offer(pick, now=now)
            if first is None:
                left.append(pick)
            else:
                ready.append(first)
        if not ready:
            return left
        try:
            reserved = await self._location.reserve_many([f.hold for f in ready])
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning("window holds failed (%r); dispatching its trips one by one", exc)
            await self._release_all([f.hold for f in ready])
            return left + [f.pick for f in ready]
        held: list[_FirstOffer] = []
        for first, ok in zip(ready, reserved, strict=True):
            if ok:
                held.append(first)
            else:  # taken since the search: the trip's own step goes on with its next
                first.pick.log.busy(first.offer.driver_id)
                first.pick.log.drop(first.offer.driver_id)
                left.append(first.pick)
        if not held:
            return left
        changes = [
            (
                f.pick.trip,
                f.trip,
                f.event,
                f.pick.log.offered(f.offer.driver_id, f.offer.offer_id),
            )
            for f in held
        ]
        try:
            written = await self._store.save_first_offers(changes, at=now)
        except Exception as exc:
            reraise_if_cancelling()
            # Nothing was written. A unique index refusing an offer is the database knowing
            # better than the index: the steps one by one find out which driver it was.
            logger.warning("window offers failed (%r); dispatching its trips one by one", exc)
            await self._release_all([f.hold for f in held])
            return left + [f.pick for f in held]
        lost = [f for f in held if f.trip.id not in written]
        await self._release_all([f.hold for f in lost])
        return left + [f.pick for f in lost]

    def _first_offer(self, pick: Pick, *, now: datetime) -> _FirstOffer | None:
        """The pick's trip offered to its assigned driver, or None when that is not a first
        offer to make now (a lapsed offer to end first, offers used up, too late...)."""
        trip, driver = pick.trip, pick.assigned
        if driver is None or trip.offers or trip.state not in _DISPATCHABLE:
            return None
        current = domain.dispatch(trip, now=now) if trip.state is TripState.REQUESTED else trip
        step = domain.next_dispatch_step(
            current, [driver.driver_id], radius_index=0, now=now, plan=self._plan
        )
        if not (isinstance(step, OfferTo) and step.driver_id == driver.driver_id):
            return None
        offered = self._offers_to(current, {driver.driver_id: driver.distance_m}, now=now)
        event = wire.offered(offered, distance_to_pickup_m=driver.distance_m)
        return _FirstOffer(pick, offered, event)

    async def _release_all(self, holds: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self._location.release(d, trip_id=t) for d, t in holds))

    async def _end_claim(self, trip_id: str, claim: str) -> None:
        try:
            await self._store.end_dispatch_claim(trip_id, claim=claim)
        except Exception as exc:
            reraise_if_cancelling()
            # Not worth failing the step for (nor hiding its own error): the claim lapses.
            logger.warning("could not end the dispatch claim on trip %s: %r", trip_id, exc)

    async def _step(self, trip: Trip, log: RoundLog | None = None) -> bool:
        """One step on ``trip`` as read; ConcurrencyError when the trip changed since. True
        when it committed a change (which ended the step's claim)."""
        now = self._clock()
        steps: list[_Change] = []
        current = trip
        if current.state is TripState.REQUESTED:
            current = domain.dispatch(current, now=now)
            steps.append((current, []))
        pending = current.offers
        if any(now < o.expires_at for o in pending):
            return False  # not due: a driver still has time to answer
        for lapsed in pending:
            expired = domain.expire_offer(current, offer_id=lapsed.offer_id, now=now)
            ended = wire.offer_ended(current, lapsed, OfferEndReason.EXPIRED)
            steps.append((expired, [ended]))
            current = expired
        await self._offer_next(trip, current, steps, now=now, log=log)
        for lapsed in pending:
            # Only once the expiry committed: until then the driver's offer still stands.
            await self._location.release(lapsed.driver_id, trip_id=trip.id)
        return True

    async def _offer_next(
        self,
        read: Trip,
        trip: Trip,
        steps: list[_Change],
        *,
        now: datetime,
        log: RoundLog | None = None,
    ) -> None:
        """Offer ``trip`` to the nearest untried drivers (up to ``plan.parallel_offers`` at
        once), widening the radius while none is found, or give up, and commit that after
        ``steps`` over the trip as ``read``. With a window's ``log``, its ranked candidates
        come first; once none of them can be held, nearest-first."""
        plan = self._plan
        radius_index = 0
        skip: set[str] = set()
        held: dict[str, float] = {}  # reserved for this trip in the index -> distance
        ranked = log is not None and log.offer_order is not None
        if log is None:
            log = RoundLog(self._cost, region=self._window.region_of(trip))
        if ranked and log.offer_order is not None:
            candidates = list(log.offer_order)
        else:
            candidates = await self._search(trip, radius_index, skip, log)
        try:
            while True:
                batch = self._offers_to(trip, held, now=now)
                step = None
                if len(held) < plan.parallel_offers:
                    step = domain.next_dispatch_step(
                        batch,
                        [c.driver_id for c in candidates],
                        radius_index=radius_index,
                        now=now,
                        plan=plan,
                        skip=skip,
                    )
                if isinstance(step, Widen) and not held:
                    if ranked:  # the window's candidates are used up: nearest-first from here
                        ranked = False
                    else:
                        radius_index = step.radius_index
                    candidates = await self._search(trip, radius_index, skip, log)
                    continue
                if isinstance(step, GiveUp) and not held:
                    ended = domain.exhaust(trip, now=now, reason=step.reason)
                    event = wire.no_drivers(ended, max_radius_m=plan.radius_steps_m[radius_index])
                    await self._commit(
                        read, [*steps, (ended, [event])], round_=log.gave_up(step.reason), now=now
                    )
                    return
                if isinstance(step, OfferTo):
                    wanted = self._rest_of_batch(batch, step, candidates, radius_index, skip, now)
                    await self._reserve(trip, wanted, candidates, held=held, skip=skip, log=log)
                    continue
                # The batch is full, or nobody else is within this radius: offer to those held.
                events = [
                    wire.offered(batch, distance_to_pickup_m=held[o.driver_id], offer=o)
                    for o in batch.offers
                ]
                round_ = log.offered_all([(o.driver_id, o.offer_id) for o in batch.offers])
                try:
                    await self._commit(read, [*steps, (batch, events)], round_=round_, now=now)
                except DriverUnavailableError:
                    # The index said available, the database says a driver holds another
                    # offer or trip: that one owns the OFFERED/ON_TRIP mark, leave it.
                    taken = await self._store.held_elsewhere(list(held), trip_id=trip.id)
                    if not taken:
                        raise
                    for driver_id in taken:
                        del held[driver_id]
                        skip.add(driver_id)
                        log.busy(driver_id)
                    continue
                held.clear()  # the offers own the holds now
                return
        finally:
            # Reserved in the index but no offer committed: give the drivers back.
            for driver_id in held:
                await self._location.release(driver_id, trip_id=trip.id)

    def _rest_of_batch(
        self,
        batch: Trip,
        first: OfferTo,
        candidates: list[Nearby],
        radius_index: int,
        skip: set[str],
        now: datetime,
    ) -> list[str]:
        """``first`` and the next untried candidates of the same search, as many as the batch
        has room for (and ``max_offers`` allows): reserved together, not one after another."""
        room = min(
            self._plan.parallel_offers - len(batch.offers),
            self._plan.max_offers - batch.offer_attempts,
        )
        wanted = [first.driver_id]
        ids = [c.driver_id for c in candidates]
        while len(wanted) < room:
            step = domain.next_dispatch_step(
                batch,
                ids,
                radius_index=radius_index,
                now=now,
                plan=self._plan,
                skip=skip | set(wanted),
            )
            if not isinstance(step, OfferTo) or step.radius_index != radius_index:
                break
            wanted.append(step.driver_id)
        return wanted

    async def _reserve(
        self,
        trip: Trip,
        wanted: list[str],
        candidates: list[Nearby],
        *,
        held: dict[str, float],
        skip: set[str],
        log: RoundLog,
    ) -> None:
        """Hold each of ``wanted`` for ``trip`` in the location index at once: the held go in
        ``held`` (with their distance), the taken (by another trip since the search) in
        ``skip``. A failed call is raised after the others are recorded, so that the caller
        gives back what was held."""
        results = await asyncio.gather(
            *(self._location.reserve(d, trip_id=trip.id) for d in wanted), return_exceptions=True
        )
        distance = {c.driver_id: c.distance_m for c in candidates}
        failure: BaseException | None = None
        for driver_id, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            elif result:
                held[driver_id] = distance[driver_id]
            else:
                skip.add(driver_id)  # taken by another trip since the search
                log.busy(driver_id)
        if failure is not None:
            raise failure

    def _offers_to(self, trip: Trip, drivers: dict[str, float], *, now: datetime) -> Trip:
        """``trip`` offered to each of ``drivers``, in the order they were reserved."""
        for driver_id in drivers:
            trip = domain.offer(
                trip,
                offer_id=uuid.uuid4().hex,
                driver_id=driver_id,
                now=now,
                timeout=self._plan.offer_timeout,
                parallel=self._plan.parallel_offers,
            )
        return trip

    async def _commit(
        self,
        read: Trip,
        steps: list[_Change],
        *,
        round_: DispatchRound | None = None,
        now: datetime | None = None,
    ) -> None:
        """Write ``steps`` (each trip after the one before, the first after ``read``) in one
        transaction, version-checked against ``read``; the new version ends the step's claim.
        A step without events is written together with the next one (its history record goes
        in all the same). ``round_``, the explanation of the dispatch round, goes in with it."""
        async with self._store.transaction() as conn:
            before = read
            for i, (after, events) in enumerate(steps):
                if not events and i + 1 < len(steps):
                    continue
                await self._store.save(conn, before, after, events=events)
                before = after
            if round_ is not None:
                await self._store.save_round(conn, before, round_, at=now or self._clock())

    async def _search(
        self, trip: Trip, radius_index: int, skip: set[str], log: RoundLog
    ) -> list[Nearby]:
        hits = await self._location.nearest(
            trip.pickup,
            radius_m=self._plan.radius_steps_m[radius_index],
            limit=self._plan.candidates_per_search,
            vehicle_class=trip.vehicle_class,
            exclude=trip.excluded_driver_ids | skip,
        )
        log.searched(hits)
        log.left_out(trip.excluded_driver_ids, Reason.DECLINED_BEFORE)
        return hits
