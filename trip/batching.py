"""The dispatch window: trips that need a driver within ``dispatch_window_s`` of each other
are matched together (``trip.matcher``) instead of each taking its nearest driver in turn.

A window opens with the first trip kicked after the last one closed, at the moment that
trip's request arrived. Its length is what the first trip waits until its offer is out, the
window's own work included: the window stops collecting that much earlier than
``dispatch_window_s`` as the slowest of the last few windows took from their close to their
offers published by the outbox relay (at most half the window), and earlier still when a
window closing meanwhile reports a slower close. So a window adds at most its own length to
request -> offer, however many trips it holds. Every kick goes through it (a trip
back in dispatch after a decline or an expiry too: it is matched with the window's new
requests, its declined drivers excluded). At the close it:

1. **claims** the window's trips in one statement (``TripStore.claim_many_for_dispatch``, the
   lease a single step takes), so no other step or copy works on them meanwhile; a trip
   already claimed elsewhere is left to that step;
2. groups the trips that need a driver by the **H3 region** of their pickup
   (``dispatch_region_res``) and searches **every region in one call** (NearestDriversBatch):
   around the region's centre, with a radius that covers its trips plus
   ``dispatch_max_pickup_m``, a few drivers per trip, of the trips' class when they share one.
   The search returns positions, so the matcher measures every (trip, driver) pair itself and
   can say why a driver was left out (wrong class, declined before, stale, too far);
3. **solves** each region's assignment, then offers every trip its assigned driver at once
   (``Dispatcher.offer_assigned``): **one ReserveDrivers call** holds the drivers (the same
   compare-and-set in location as a single step's) and **one transaction** commits the offers,
   each version-checked (``TripStore.save_first_offers``). A trip whose driver was taken
   meanwhile, that changed under the window, that has no assigned driver, or that needs more
   than a first offer (a lapsed offer to end, parallel offers) goes on with the step of one
   trip (``Dispatcher.advance_claimed``) and its ranked candidates, as before.

A region whose problem has more than ``dispatch_max_pairs`` trips x drivers, or whose solve
would start later than a window after the close, falls back to nearest-first per trip and
counts that in ``trip_dispatch_window_fallbacks_total``. Trips with a pending offer still
running, or a failing search, go the nearest-first way too.

Nothing of the window lives only in memory: a copy that dies with trips in its window left
them unclaimed or claimed until ``dispatch_claim_s``, and the poller of any copy picks them up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import h3
from prometheus_client import Counter, Histogram

from protos.location.v1 import location_pb2
from rideshare.bus import reraise_if_cancelling
from rideshare.lifecycle import next_or_stop, wait_any
from trip import wire
from trip.domain import InvalidArgumentError, LatLng, Trip, TripState, VehicleClass
from trip.explain import Policy, RoundLog
from trip.matcher import Candidate, CostModel, DriverHit, WaitingTrip, match
from trip.pricing import haversine_m
from trip.settings import TripSettings
from trip.store import TripStore


@dataclass(frozen=True, slots=True)
class Search:
    """One region's search of a window: drivers around ``point`` within ``radius_m``."""

    point: LatLng
    radius_m: float
    limit: int
    vehicle_class: VehicleClass | None


@dataclass(frozen=True, slots=True)
class Pick:
    """A claimed trip of a window with its round so far and the driver the assignment gave
    it (None: none it may have)."""

    trip: Trip
    claim: str
    log: RoundLog
    assigned: Candidate | None


class Dispatcher(Protocol):
    """What a window needs of ``trip.dispatch.Dispatcher`` (which owns the window)."""

    @property
    def cost_model(self) -> CostModel: ...

    async def offer_assigned(self, picks: Sequence[Pick]) -> list[Pick]: ...

    async def advance_claimed(
        self, trip: Trip, claim: str, *, log: RoundLog | None = None
    ) -> None: ...


class LocationClient(Protocol):
    """What a window needs of ``trip.dispatch.LocationClient``."""

    async def drivers_around(self, searches: Sequence[Search]) -> list[list[DriverHit]]: ...


__all__ = ["BatchWindow", "Pick", "Search", "hit_from_proto"]

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
WINDOW_CLOSE_SECONDS = Histogram(
    "trip_dispatch_window_close_seconds",
    "Time from a dispatch window's close to its assigned offers committed and published; "
    "the window collects that much less (the slowest of the last few, at most half the "
    "window).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
WINDOW_FALLBACKS = Counter(
    "trip_dispatch_window_fallbacks_total",
    "Trips of a dispatch window dispatched nearest-first instead, by reason: too_big (more "
    "trips x drivers than RIDESHARE_DISPATCH_MAX_PAIRS), late (the solve would start more "
    "than a window after the close), search_failed.",
    ["reason"],
)

# A region's search asks for a few drivers per trip (enough for the assignment to choose
# among, and for the trips to fall back on), within NearestDrivers' cap of 50.
_DRIVERS_PER_TRIP = 3
_EXTRA_DRIVERS = 5
_SEARCH_LIMIT = 50
# A window collects for its length less the slowest close of this many windows before it.
_TOOK_WINDOWS = 5
# Trips claimed per statement.
_CLAIM_CHUNK = 500


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
        flushed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``flushed`` returns once what was committed before the call is published
        (``OutboxRelay.flushed``); without it a window's close ends at its commit."""
        self._dispatcher = dispatcher
        self._store = store
        self._location = location
        self._settings = settings
        self._clock = clock
        self._claim_for = timedelta(seconds=settings.dispatch_claim_s)
        self._flushed = flushed
        self._incoming: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self._waiting: set[str] = set()
        self._gate = asyncio.Semaphore(settings.dispatch_concurrency)
        # (seconds from close to offers out, trips) of the last few windows
        self._took: collections.deque[tuple[float, int]] = collections.deque(maxlen=_TOOK_WINDOWS)
        self._took_noted = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._settings.dispatch_window_s > 0

    def region_of(self, trip: Trip) -> str:
        return str(
            h3.latlng_to_cell(trip.pickup.lat, trip.pickup.lng, self._settings.dispatch_region_res)
        )

    def add(self, trip_id: str, *, since: float | None = None) -> None:
        """Dispatch ``trip_id`` at the end of the current window (duplicates are dropped);
        ``since`` (``time.monotonic()``, default now) is when its wait began: a window it
        opens is counted from then."""
        if trip_id not in self._waiting:
            self._waiting.add(trip_id)
            now = time.monotonic()
            self._incoming.put_nowait((trip_id, now if since is None else min(since, now)))

    async def run(self, stop: asyncio.Event) -> None:
        """Open and close windows until ``stop`` is set; each closed window is dispatched
        while the next one collects."""
        async with asyncio.TaskGroup() as group:
            while not stop.is_set():
                trip_ids = await self._collect(stop)
                if trip_ids:
                    group.create_task(self._close(trip_ids, closed_at=time.monotonic()))

    def _collect_s(self, trips: int = 0) -> float:
        """How long a window of ``trips`` so far collects: its length less the slowest of
        the last windows' closes, or less the biggest one's scaled to ``trips`` when it
        already holds more (a close costs about as much per trip)."""
        window = self._settings.dispatch_window_s
        if not self._took:
            return window
        biggest_took, biggest = max(self._took, key=lambda took_trips: took_trips[1])
        took = max(max(t for t, _ in self._took), biggest_took * trips / biggest)
        return window - min(took, window / 2)

    async def _collect(self, stop: asyncio.Event) -> list[str]:
        """The trips of one window: from the first that arrives, for the window's length."""
        first = await next_or_stop(self._incoming, stop)
        if first is None:
            return []
        first_id, opened = first
        # The window is a length of time: whatever was kicked by its end is in it. (Waiting
        # on the queue under a timeout instead could lose an item the timeout interrupted.)
        # Its end moves earlier when a window closing meanwhile reports a slower close (the
        # first windows after a start have none to go by); a stop closes it at once.
        # It looks again every tenth of a window, as its trips add up.
        while not stop.is_set():
            left_s = opened + self._collect_s(1 + self._incoming.qsize()) - time.monotonic()
            if left_s <= 0:
                break
            self._took_noted.clear()
            await wait_any(
                stop, self._took_noted, min(left_s, self._settings.dispatch_window_s / 10)
            )
        trip_ids = [first_id]
        while not self._incoming.empty():
            trip_ids.append(self._incoming.get_nowait()[0])
        self._waiting.difference_update(trip_ids)
        return trip_ids

    async def _close(self, trip_ids: list[str], *, closed_at: float) -> None:
        try:
            await self._dispatch(trip_ids, closed_at=closed_at)
        except Exception:
            reraise_if_cancelling()
            # The trips stay due (claimed ones once their claims lapse): the poller retries.
            logger.exception("dispatch of a window of %d trips failed", len(trip_ids))

    async def _dispatch(self, trip_ids: list[str], *, closed_at: float) -> None:
        """Claim, search, match and offer one closed window's trips."""
        claim = uuid.uuid4().hex
        claimed = await self._claim(trip_ids, claim)
        regions: dict[str, list[Trip]] = {}
        on_their_own: list[Trip] = []
        now = self._clock()
        for trip in claimed:
            offer = trip.offer
            if trip.state in (TripState.REQUESTED, TripState.DISPATCHING) and (
                offer is None or offer.expires_at <= now
            ):
                regions.setdefault(self.region_of(trip), []).append(trip)
            else:
                on_their_own.append(trip)
        picks, fallbacks = await self._match(regions, claim, closed_at)
        left = await self._dispatcher.offer_assigned(picks)
        await asyncio.gather(
            self._note_took(closed_at, len(trip_ids), offered=len(left) < len(picks)),
            *(self._advance(trip, claim, None) for trip in on_their_own),
            *(self._advance(p.trip, p.claim, p.log) for p in left),
            *(self._fallback(trips, claim, reason) for reason, trips in fallbacks.items()),
        )

    async def _note_took(self, closed_at: float, trips: int, *, offered: bool) -> None:
        """Remember how long the window took from its close to its offers out: committed,
        then published by the relay (waited for at most half a window)."""
        if offered and self._flushed is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.dispatch_window_s / 2):
                    await self._flushed()
        took = time.monotonic() - closed_at
        self._took.append((took, trips))
        self._took_noted.set()
        WINDOW_CLOSE_SECONDS.observe(took)

    async def _claim(self, trip_ids: list[str], claim: str) -> list[Trip]:
        """The window's trips that this window may dispatch (one statement per 500); a trip
        claimed elsewhere is left to that step."""
        now = self._clock()
        claimed: list[Trip] = []
        for start in range(0, len(trip_ids), _CLAIM_CHUNK):
            chunk = trip_ids[start : start + _CLAIM_CHUNK]
            try:
                claimed += await self._store.claim_many_for_dispatch(
                    chunk, claim=claim, now=now, until=now + self._claim_for
                )
            except Exception:
                reraise_if_cancelling()
                logger.exception(
                    "could not claim %d trips for their window; the poller retries", len(chunk)
                )
        return claimed

    def _search_of(self, trips: list[Trip]) -> Search:
        """One region's search: around its centre, far enough for every trip's limit, for
        the trips' class when they share one."""
        centre = LatLng(*h3.cell_to_latlng(self.region_of(trips[0])))
        reach = max(haversine_m(centre, trip.pickup) for trip in trips)
        classes = {trip.vehicle_class for trip in trips}
        return Search(
            centre,
            radius_m=math.ceil(reach + self._dispatcher.cost_model.max_pickup_m),
            limit=min(_SEARCH_LIMIT, _DRIVERS_PER_TRIP * len(trips) + _EXTRA_DRIVERS),
            vehicle_class=classes.pop() if len(classes) == 1 else None,
        )

    async def _match(
        self, regions: dict[str, list[Trip]], claim: str, closed_at: float
    ) -> tuple[list[Pick], dict[str, list[Trip]]]:
        """Search every region in one call and solve each region's assignment: the picks,
        and the trips that go nearest-first instead, by reason."""
        fallbacks: dict[str, list[Trip]] = {}
        names = list(regions)
        try:
            found = await self._location.drivers_around(
                [self._search_of(regions[r]) for r in names]
            )
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning("window search of %d regions failed: %r", len(names), exc)
            fallbacks["search_failed"] = [t for trips in regions.values() for t in trips]
            return [], fallbacks
        late = time.monotonic() - closed_at > self._settings.dispatch_window_s
        picks: list[Pick] = []
        model = self._dispatcher.cost_model
        for region, hits in zip(names, found, strict=True):
            trips = regions[region]
            WINDOW_TRIPS.observe(len(trips))
            if len(trips) * len(hits) > self._settings.dispatch_max_pairs:
                fallbacks.setdefault("too_big", []).extend(trips)
                continue
            if late:
                fallbacks.setdefault("late", []).extend(trips)
                continue
            started = time.perf_counter()
            waiting = [
                WaitingTrip(t.id, t.pickup, t.vehicle_class, t.excluded_driver_ids, region)
                for t in trips
            ]
            matches = match(waiting, hits, model)
            WINDOW_SOLVE_SECONDS.observe(time.perf_counter() - started)
            for trip in trips:
                found_match = matches[trip.id]
                log = RoundLog(model, region=region, policy=Policy.BATCH, window_trips=len(trips))
                log.ranked(found_match)
                assigned = found_match.candidates[0] if found_match.assigned else None
                picks.append(Pick(trip, claim, log, assigned))
        return picks, fallbacks

    async def _fallback(self, trips: list[Trip], claim: str, reason: str) -> None:
        WINDOW_FALLBACKS.labels(reason).inc(len(trips))
        model = self._dispatcher.cost_model
        await asyncio.gather(
            *(
                self._advance(
                    trip,
                    claim,
                    RoundLog(model, region=self.region_of(trip), policy=Policy.NEAREST_FALLBACK),
                )
                for trip in trips
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
