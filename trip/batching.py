"""The dispatch window: trips that need a driver within ``dispatch_window_s`` of each other
are matched together (``trip.matcher``) instead of each taking its nearest driver in turn.

A window opens with the first trip kicked after the last one closed and closes
``dispatch_window_s`` later, so it adds at most its own length to request -> offer. Every kick
goes through it (a trip back in dispatch after a decline or an expiry too: it is matched with
the window's new requests, its declined drivers excluded). At the close it:

1. **claims** each trip (``TripStore.claim_for_dispatch``, as a single step does), so no other
   step or copy works on it meanwhile; a trip already claimed elsewhere is left to that step;
2. groups the trips that need a driver by the **H3 region** of their pickup
   (``dispatch_region_res``) and makes **one search per region**: NearestDrivers, any class,
   around the region's centre with a radius that covers its trips plus
   ``dispatch_max_pickup_m``. The search returns positions, so the matcher measures every
   (trip, driver) pair itself and can say why a driver was left out (wrong class, declined
   before, stale, too far);
3. **solves** each region's assignment and hands each trip, with its ranked candidates, to
   ``Dispatcher.advance_claimed``: the same reserve in location and version-checked commit as
   nearest-first, so none of its guarantees change. The regions' trips go at once: the
   assigned drivers are distinct, so their reservations do not collide.

A region whose problem has more than ``dispatch_max_pairs`` trips x drivers, or whose solve
would start later than a window after the close, falls back to nearest-first per trip and
counts that in ``trip_dispatch_window_fallbacks_total``. Trips with a pending offer still
running, or a failing search, go the nearest-first way too.

Nothing of the window lives only in memory: a copy that dies with trips in its window left
them unclaimed or claimed until ``dispatch_claim_s``, and the poller of any copy picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import h3
from prometheus_client import Counter, Histogram

from protos.location.v1 import location_pb2
from rideshare.bus import reraise_if_cancelling
from rideshare.lifecycle import next_or_stop
from trip import wire
from trip.domain import InvalidArgumentError, LatLng, Trip, TripState
from trip.explain import Policy, RoundLog
from trip.matcher import CostModel, DriverHit, WaitingTrip, match
from trip.pricing import haversine_m
from trip.settings import TripSettings
from trip.store import TripStore


class Dispatcher(Protocol):
    """What a window needs of ``trip.dispatch.Dispatcher`` (which owns the window)."""

    @property
    def cost_model(self) -> CostModel: ...

    async def advance_claimed(
        self, trip: Trip, claim: str, *, log: RoundLog | None = None
    ) -> None: ...


class LocationClient(Protocol):
    """What a window needs of ``trip.dispatch.LocationClient``."""

    async def drivers_around(
        self, point: LatLng, *, radius_m: float, limit: int
    ) -> list[DriverHit]: ...


__all__ = ["BatchWindow", "hit_from_proto"]

logger = logging.getLogger(__name__)

WINDOW_TRIPS = Histogram(
    "trip_dispatch_window_trips",
    "Trips that needed a driver in one region of one dispatch window.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
WINDOW_SOLVE_SECONDS = Histogram(
    "trip_dispatch_window_solve_seconds",
    "Time to build and solve one region's assignment of a dispatch window.",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
)
WINDOW_FALLBACKS = Counter(
    "trip_dispatch_window_fallbacks_total",
    "Trips of a dispatch window dispatched nearest-first instead, by reason: too_big (more "
    "trips x drivers than RIDESHARE_DISPATCH_MAX_PAIRS), late (the solve would start more "
    "than a window after the close), search_failed.",
    ["reason"],
)

# NearestDrivers returns at most this many drivers (location's cap).
_SEARCH_LIMIT = 50


def hit_from_proto(d: location_pb2.NearbyDriver) -> DriverHit:
    """A NearestDrivers hit as the matcher sees it."""
    try:
        vehicle_class = wire.vehicle_class_from_proto(d.vehicle_class)
    except InvalidArgumentError:  # unspecified: the location service does not know it
        vehicle_class = None
    return DriverHit(
        d.driver_id,
        LatLng(d.position.lat, d.position.lng),
        vehicle_class,
        position_age_s=d.position_age_ms / 1000,
    )


class BatchWindow:
    """Collects kicked trips and dispatches each window's trips together."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: TripStore,
        location: LocationClient,
        settings: TripSettings,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._location = location
        self._settings = settings
        self._clock = clock
        self._claim_for = timedelta(seconds=settings.dispatch_claim_s)
        self._incoming: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        self._gate = asyncio.Semaphore(settings.dispatch_concurrency)

    @property
    def enabled(self) -> bool:
        return self._settings.dispatch_window_s > 0

    def region_of(self, trip: Trip) -> str:
        return str(
            h3.latlng_to_cell(trip.pickup.lat, trip.pickup.lng, self._settings.dispatch_region_res)
        )

    def add(self, trip_id: str) -> None:
        """Dispatch ``trip_id`` at the end of the current window (duplicates are dropped)."""
        if trip_id not in self._waiting:
            self._waiting.add(trip_id)
            self._incoming.put_nowait(trip_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Open and close windows until ``stop`` is set; each closed window is dispatched
        while the next one collects."""
        async with asyncio.TaskGroup() as group:
            while not stop.is_set():
                trip_ids = await self._collect(stop)
                if trip_ids:
                    group.create_task(self._close(trip_ids, closed_at=time.monotonic()))

    async def _collect(self, stop: asyncio.Event) -> list[str]:
        """The trips of one window: from the first that arrives, for the window's length."""
        first = await next_or_stop(self._incoming, stop)
        if first is None:
            return []
        trip_ids = [first]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.dispatch_window_s):
                while True:
                    trip_ids.append(await self._incoming.get())
        self._waiting.difference_update(trip_ids)
        return trip_ids

    async def _close(self, trip_ids: list[str], *, closed_at: float) -> None:
        claimed = await asyncio.gather(*(self._claim(t) for t in trip_ids))
        regions: dict[str, list[tuple[Trip, str]]] = {}
        on_their_own: list[tuple[Trip, str]] = []
        now = self._clock()
        for item in claimed:
            if item is None:
                continue
            trip, _ = item
            offer = trip.offer
            if trip.state in (TripState.REQUESTED, TripState.DISPATCHING) and (
                offer is None or offer.expires_at <= now
            ):
                regions.setdefault(self.region_of(trip), []).append(item)
            else:
                on_their_own.append(item)
        await asyncio.gather(
            *(self._advance(trip, claim, None) for trip, claim in on_their_own),
            *(self._region(region, items, closed_at) for region, items in regions.items()),
        )

    async def _claim(self, trip_id: str) -> tuple[Trip, str] | None:
        claim = uuid.uuid4().hex
        now = self._clock()
        try:
            async with self._gate:
                trip = await self._store.claim_for_dispatch(
                    trip_id, claim=claim, now=now, until=now + self._claim_for
                )
        except Exception:
            reraise_if_cancelling()
            logger.exception("could not claim trip %s for its window; the poller retries", trip_id)
            return None
        return None if trip is None else (trip, claim)

    async def _region(self, region: str, items: list[tuple[Trip, str]], closed_at: float) -> None:
        """Search, solve and dispatch one region of a closed window."""
        WINDOW_TRIPS.observe(len(items))
        centre = LatLng(*h3.cell_to_latlng(region))
        model = self._dispatcher.cost_model
        reach = max(haversine_m(centre, trip.pickup) for trip, _ in items)
        try:
            hits = await self._location.drivers_around(
                centre, radius_m=math.ceil(reach + model.max_pickup_m), limit=_SEARCH_LIMIT
            )
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning("window search of region %s failed: %r", region, exc)
            await self._fallback(items, "search_failed")
            return
        if len(items) * len(hits) > self._settings.dispatch_max_pairs:
            await self._fallback(items, "too_big")
            return
        if time.monotonic() - closed_at > self._settings.dispatch_window_s:
            await self._fallback(items, "late")
            return
        started = time.perf_counter()
        waiting = [
            WaitingTrip(trip.id, trip.pickup, trip.vehicle_class, trip.excluded_driver_ids, region)
            for trip, _ in items
        ]
        matches = match(waiting, hits, model)
        WINDOW_SOLVE_SECONDS.observe(time.perf_counter() - started)
        logs = []
        for trip, claim in items:
            log = RoundLog(model, region=region, policy=Policy.BATCH, window_trips=len(items))
            log.ranked(matches[trip.id])
            logs.append((trip, claim, log))
        await asyncio.gather(*(self._advance(trip, claim, log) for trip, claim, log in logs))

    async def _fallback(self, items: list[tuple[Trip, str]], reason: str) -> None:
        WINDOW_FALLBACKS.labels(reason).inc(len(items))
        model = self._dispatcher.cost_model
        await asyncio.gather(
            *(
                self._advance(
                    trip,
                    claim,
                    RoundLog(model, region=self.region_of(trip), policy=Policy.NEAREST_FALLBACK),
                )
                for trip, claim in items
            )
        )

    async def _advance(self, trip: Trip, claim: str, log: RoundLog | None) -> None:
        try:
            async with self._gate:
                await self._dispatcher.advance_claimed(trip, claim, log=log)
        except Exception:
            reraise_if_cancelling()
            # The trip stays due; the poller brings it back.
            logger.exception("dispatch of trip %s failed; will retry", trip.id)
