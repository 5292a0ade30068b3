"""The trip service's use cases: read, decide with the pure core, write in one transaction.

Each command loads the trip, runs the domain guard, and saves the new version with its history
and outbox events in one transaction (``UPDATE ... WHERE version=$2``). A concurrent change
makes the save fail with ConcurrencyError; the command then starts over on the fresh trip, so
the caller gets the error the new state calls for ("cannot accept when state=ACCEPTED")
rather than a bare conflict. Dispatch is kicked only after the commit; the location service
learns about drivers held or freed from the events.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from rideshare import paging
from rideshare.bus import claim_event, reraise_if_cancelling
from trip import domain, explain, liveness, pricing, wire
from trip.dispatch import Dispatcher, LocationClient
from trip.domain import (
    Actor,
    Assignment,
    ConcurrencyError,
    InvalidArgumentError,
    LatLng,
    NotFoundError,
    OfferEndReason,
    Quote,
    QuoteUsedError,
    RiderHasLiveTripError,
    Trip,
    TripState,
    VehicleClass,
    Viewer,
)
from trip.explain import DispatchRound
from trip.settings import TripSettings
from trip.store import TripStore
from trip.wire import Event

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Outcome", "TripCommands"]

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DEFAULT_ASSIGNMENT_PAGE = 500
MAX_ASSIGNMENT_PAGE = 5_000
_ASSIGNMENTS_SCOPE = "trip.assignments"
_ATTEMPTS = 5
_SUPPLY_LIMIT = 50


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Outcome:
    """What a guard decided: the new trip, its events, and whether dispatch should look at it
    after the commit. (Drivers held or freed follow from the events: the location service
    applies them to its index.)"""

    trip: Trip
    events: list[Event] = field(default_factory=list)
    dispatch: bool = False


Guard = Callable[[Trip, datetime], Outcome]


class TripCommands:
    """Quotes, bookings and every command on a trip."""

    def __init__(
        self,
        store: TripStore,
        location: LocationClient,
        dispatcher: Dispatcher,
        settings: TripSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._location = location
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock
        self._liveness = settings.liveness()

    # --- quotes and booking -----------------------------------------------------------------

    async def estimate_fare(
        self, *, rider_id: str, pickup: LatLng, dropoff: LatLng, vehicle_class: VehicleClass
    ) -> Quote:
        """A stored quote for the ride, priced with the pickup area's current surge."""
        if not rider_id:
            raise InvalidArgumentError("rider_id is required")
        now = self._clock()
        surge = await self._surge(pickup, now)
        quote = domain.make_quote(
            quote_id=uuid.uuid4().hex,
            rider_id=rider_id,
            pickup=pickup,
            dropoff=dropoff,
            vehicle_class=vehicle_class,
            surge=surge,
            now=now,
            ttl=self._settings.quote_ttl,
        )
        await self._store.save_quote(quote)
        return quote

    async def _surge(self, pickup: LatLng, now: datetime) -> float:
        """Demand (recent requests in the pickup's H3 ring) over supply (available drivers
        nearby), smoothed with the cell's previous multiplier and stored as the next one's."""
        cell = pricing.pickup_cell(pickup.lat, pickup.lng)
        since = now - timedelta(seconds=self._settings.surge_window_s)
        demand, previous = await self._store.surge_inputs(
            sorted(pricing.ring(cell)), cell, since=since
        )
        try:
            supply = len(
                await self._location.nearest(
                    pickup, radius_m=self._settings.surge_supply_radius_m, limit=_SUPPLY_LIMIT
                )
            )
        except Exception as exc:
            reraise_if_cancelling()
            # A quote without fresh supply figures beats no quote: keep the last multiplier.
            logger.warning("no supply figure for cell %s (%r); keeping its surge", cell, exc)
            return previous if previous is not None else 1.0
        multiplier = pricing.surge_multiplier(demand, supply, previous)
        if multiplier != previous:
            await self._store.save_surge(cell, multiplier, now=now)
        return multiplier

    async def request_trip(
        self,
        *,
        rider_id: str,
        quote_id: str,
        pickup: LatLng,
        dropoff: LatLng,
        pickup_address: str = "",
        dropoff_address: str = "",
    ) -> Trip:
        """Book a trip at a quote's price and start dispatching it. Booking the same quote
        again (a retry, a double tap) answers the trip the first booking made."""
        arrived = time.monotonic()  # the rider's wait for a driver starts here
        addresses = (pickup_address, dropoff_address)
        if not rider_id or not quote_id:
            raise InvalidArgumentError("rider_id and quote_id are required")
        try:
            return await self._book(rider_id, quote_id, pickup, dropoff, addresses, arrived)
        except (QuoteUsedError, RiderHasLiveTripError):
            # A double tap: the same booking sent twice at once, and the other one won.
            async with self._store.transaction() as conn:
                quote = await self._store.get_quote(conn, quote_id)
                booked = await self._repeated_booking(conn, quote, rider_id, pickup, dropoff)
            if booked is None:
                raise
            return booked

    async def _book(
        self,
        rider_id: str,
        quote_id: str,
        pickup: LatLng,
        dropoff: LatLng,
        addresses: tuple[str, str],
        arrived: float,
    ) -> Trip:
        async with self._store.transaction() as conn:
            quote = await self._store.get_quote(conn, quote_id)
            if quote is None:
                raise NotFoundError(f"no quote {quote_id}")
            booked = await self._repeated_booking(conn, quote, rider_id, pickup, dropoff)
            if booked is not None:
                return booked
            trip = domain.request_trip(
                quote,
                trip_id=uuid.uuid4().hex,
                rider_id=rider_id,
                pickup=pickup,
                dropoff=dropoff,
                now=self._clock(),
                pickup_address=addresses[0],
                dropoff_address=addresses[1],
            )
            await self._store.create_trip(
                conn,
                trip,
                pickup_cell=pricing.pickup_cell(pickup.lat, pickup.lng),
                events=[wire.requested(trip)],
            )
        self._dispatcher.kick(trip.id, since=arrived)
        return trip

    async def _repeated_booking(
        self,
        conn: asyncpg.Connection,
        quote: Quote | None,
        rider_id: str,
        pickup: LatLng,
        dropoff: LatLng,
    ) -> Trip | None:
        """The trip an identical earlier booking of ``quote`` made (domain.repeated_booking),
        or None."""
        if quote is None:
            return None
        repeated = domain.repeated_booking(quote, rider_id=rider_id, pickup=pickup, dropoff=dropoff)
        return await self._store.get_trip(conn, repeated) if repeated else None

    # --- reads ------------------------------------------------------------------------------

    async def get_trip(self, trip_id: str, *, viewer: Viewer) -> Trip:
        """The trip with its history; NotFoundError alike when there is none and when
        ``viewer`` may not see it (domain.check_visible)."""
        async with self._store.transaction() as conn:
            trip = await self._store.get_trip(conn, trip_id)
        if trip is None:
            raise domain.trip_not_found()
        domain.check_visible(trip, viewer)
        return trip

    async def explain_dispatch(
        self, trip_id: str
    ) -> tuple[Trip, list[tuple[DispatchRound, list[str]]]]:
        """The trip and its dispatch rounds, each with how each of its offers ended
        (``trip.explain``)."""
        async with self._store.transaction() as conn:
            trip = await self._store.get_trip(conn, trip_id)
            rounds = await self._store.dispatch_rounds(conn, trip_id)
        if trip is None:
            raise domain.trip_not_found()
        pending = frozenset({trip.offer.offer_id} if trip.offer is not None else ())
        return trip, [
            (
                r,
                [
                    explain.offer_outcome(r, d, o, trip.history, pending=pending)
                    for d, o in r.offers
                ],
            )
            for r in rounds
        ]

    async def list_trips(
        self,
        *,
        states: Sequence[TripState],
        rider_id: str | None,
        driver_id: str | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Trip], str]:
        """One page of trips, newest first, and the next page's token ("" on the last)."""
        if page_size < 0:
            raise InvalidArgumentError(f"page_size {page_size} is negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = wire.trips_scope(states, rider_id=rider_id, driver_id=driver_id)
        after = wire.decode_page_token(page_token, scope=scope) if page_token else None
        trips = await self._store.list_trips(
            states=states, rider_id=rider_id, driver_id=driver_id, limit=size + 1, after=after
        )
        if len(trips) > size:
            return trips[:size], wire.encode_page_token(trips[size - 1], scope=scope)
        return trips, ""

    async def active_assignments(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[Assignment], str]:
        """One page of the drivers held by live trips, by (driver id, trip id), and the next
        page's token ("" on the last)."""
        try:
            limit = paging.page_size(
                page_size, default=DEFAULT_ASSIGNMENT_PAGE, maximum=MAX_ASSIGNMENT_PAGE
            )
            after = None
            if page_token:
                driver_id, trip_id = paging.decode_page_token(
                    page_token, _ASSIGNMENTS_SCOPE, key_types=(str, str)
                )
                after = (str(driver_id), str(trip_id))
        except paging.InvalidPageError as exc:
            raise InvalidArgumentError(str(exc)) from None
        rows = await self._store.active_assignments(after=after, limit=limit + 1)
        page = rows[:limit]
        token = ""
        if len(rows) > limit:
            token = paging.encode_page_token(
                _ASSIGNMENTS_SCOPE, [page[-1].driver_id, page[-1].trip_id]
            )
        return page, token

    # --- commands ---------------------------------------------------------------------------

    async def cancel(self, trip_id: str, *, actor: Actor, actor_id: str, reason: str) -> Trip:
        """Cancel (rider, system, admin), or a driver's cancel that re-dispatches the trip."""
        viewer = Viewer(actor, actor_id)
        if actor is Actor.DRIVER:
            driver_cancel = self._driver_cancel(actor_id, reason, Actor.DRIVER)
            return await self._run(trip_id, driver_cancel, viewer=viewer)

        def rider_or_service(trip: Trip, now: datetime) -> Outcome:
            after, _fee = domain.cancel(
                trip,
                actor=actor,
                actor_id=actor_id,
                now=now,
                reason=reason,
                policy=self._settings.cancellation_policy,
            )
            # Each pending offer ends with the trip, so its driver's app drops it at once.
            ended = wire.offers_ended(trip, OfferEndReason.TRIP_CANCELLED)
            return Outcome(after, [*ended, wire.cancelled(trip, after, actor_id=actor_id)])

        return await self._run(trip_id, rider_or_service, viewer=viewer)

    def _driver_cancel(self, driver_id: str, reason: str, actor: Actor) -> Guard:
        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.driver_cancel(
                trip, driver_id=driver_id, now=now, reason=reason, actor=actor
            )
            return Outcome(
                after, [wire.driver_cancelled(trip, after, reason=reason, at=now)], dispatch=True
            )

        return guard

    async def accept(self, trip_id: str, *, driver_id: str, offer_id: str) -> Trip:
        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.accept(trip, driver_id=driver_id, offer_id=offer_id, now=now)
            # Parallel offers: the other drivers' offers end with this acceptance.
            others = wire.offers_ended(trip, OfferEndReason.ACCEPTED_ELSEWHERE, but=offer_id)
            return Outcome(after, [wire.accepted(after, offer_id=offer_id), *others])

        return await self._run(trip_id, guard, viewer=Viewer(Actor.DRIVER, driver_id))

    async def decline(self, trip_id: str, *, driver_id: str, offer_id: str) -> Trip:
        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.decline(trip, driver_id=driver_id, offer_id=offer_id, now=now)
            declined = trip.pending_offer(offer_id)
            assert declined is not None
            return Outcome(
                after,
                [wire.offer_ended(trip, declined, OfferEndReason.DECLINED)],
                dispatch=not after.offers,  # the others of a parallel batch still stand
            )

        return await self._run(trip_id, guard, viewer=Viewer(Actor.DRIVER, driver_id))

    async def arrive(self, trip_id: str, *, driver_id: str) -> Trip:
        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.arrive(trip, driver_id=driver_id, now=now)
            return Outcome(after, [wire.arrived(after)])

        return await self._run(trip_id, guard, viewer=Viewer(Actor.DRIVER, driver_id))

    async def start(self, trip_id: str, *, driver_id: str) -> Trip:
        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.start(trip, driver_id=driver_id, now=now)
            return Outcome(after, [wire.started(after)])

        return await self._run(trip_id, guard, viewer=Viewer(Actor.DRIVER, driver_id))

    async def complete(
        self,
        trip_id: str,
        *,
        driver_id: str,
        distance_m: int | None = None,
        duration_s: int | None = None,
    ) -> Trip:
        """The driver ends the ride; the fare is settled from what this service measured
        (``domain.complete``). ``distance_m`` and ``duration_s`` are what the driver's app
        reported: recorded on the settlement, never priced."""
        for name, value in (("distance_m", distance_m), ("duration_s", duration_s)):
            if value is not None and value < 0:
                raise InvalidArgumentError(f"{name} {value} is negative")
        track = await self._measure(trip_id, driver_id)
        band = self._settings.fare_band()

        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.complete(
                trip,
                driver_id=driver_id,
                now=now,
                track=track,
                band=band,
                reported_distance_m=distance_m,
                reported_duration_s=duration_s,
            )
            return Outcome(after, [wire.completed(after)])

        return await self._run(trip_id, guard, viewer=Viewer(Actor.DRIVER, driver_id))

    async def _measure(self, trip_id: str, driver_id: str) -> domain.TrackMeasurement | None:
        """The ride's distance as the location service measured it from its track, asked
        before the transaction (no lock is held across the call); None when there is none to
        ask for (the guard then refuses the command) or no answer in time (the rider then
        pays the quote, and the settlement says why)."""
        trip = await self._store.find_trip(trip_id)
        if (
            trip is None
            or trip.state is not TripState.IN_PROGRESS
            or trip.driver_id != driver_id
            or trip.started_at is None
        ):
            return None
        try:
            return await self._location.trip_distance(
                trip_id,
                since=trip.started_at,
                until=self._clock(),
                timeout_s=self._settings.fare_track_timeout_s,
            )
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning(
                "no measured distance for trip %s (%r): the quote is charged", trip_id, exc
            )
            return None

    async def rate(
        self, trip_id: str, *, side: Actor, actor_id: str, stars: int, comment: str
    ) -> Trip:
        if len(comment) > 500:
            raise InvalidArgumentError("comment is longer than 500 characters")

        def guard(trip: Trip, now: datetime) -> Outcome:
            after = domain.rate(trip, side=side, actor_id=actor_id, stars=stars)
            return Outcome(
                after,
                [wire.rated(after, side=side, rater_id=actor_id, stars=stars, comment=comment)],
            )

        return await self._run(trip_id, guard, viewer=Viewer(side, actor_id))

    async def driver_offline(self, driver_id: str, *, consumer: str, event_id: str) -> None:
        """A driver went offline: end their pending offer, or hand their not-yet-started trip
        back to dispatch. Idempotent by ``event_id`` (claimed in the effect's transaction)."""
        async with self._store.transaction() as conn:
            trip_ids = await self._store.trips_of_driver(conn, driver_id)
        for trip_id in trip_ids:

            def guard(trip: Trip, now: datetime) -> Outcome:
                pending = next((o for o in trip.offers if o.driver_id == driver_id), None)
                if pending is not None:
                    after = domain.expire_offer(
                        trip, offer_id=pending.offer_id, now=now, reason="driver went offline"
                    )
                    ended = wire.offer_ended(trip, pending, OfferEndReason.DRIVER_OFFLINE)
                    return Outcome(after, [ended], dispatch=not after.offers)
                if trip.driver_id == driver_id and trip.state in (
                    TripState.ACCEPTED,
                    TripState.ARRIVED,
                ):
                    return self._driver_cancel(driver_id, "driver went offline", Actor.SYSTEM)(
                        trip, now
                    )
                return Outcome(trip)  # nothing to do: on the ride, or already moved on

            await self._run(trip_id, guard, claim=(consumer, f"{event_id}:{trip_id}"))

    async def enforce_clocks(self, trip_id: str, *, heard: liveness.Heard | None) -> Trip:
        """Do what ``liveness.decide`` says the trip's clocks call for now, if anything.

        ``heard`` is what the location service said about the driver, read before this call
        (None when it could not say). The decision is made again on the trip as loaded in the
        transaction, so a trip that moved on since the sweeper listed it, or that another
        sweeper copy acted on first (the version check), is judged as it is now.
        """
        policy = self._liveness

        def guard(trip: Trip, now: datetime) -> Outcome:
            action = liveness.decide(trip, now=now, policy=policy, heard=heard)
            if action is None:
                return Outcome(trip)
            logger.info("trip %s in %s: %s", trip.id, trip.state, action.reason)
            return self._liveness_outcome(trip, action, now)

        return await self._run(trip_id, guard)

    def _liveness_outcome(self, trip: Trip, action: liveness.SweepAction, now: datetime) -> Outcome:
        rule, reason = action.rule, action.reason
        if isinstance(action, liveness.Reassign):
            after = domain.reassign(trip, driver_id=action.driver_id, now=now, reason=reason)
            event = wire.driver_cancelled(trip, after, reason=reason, at=now, rule=rule)
            return Outcome(after, [event], dispatch=True)
        if isinstance(action, liveness.Flag):
            after = domain.flag(trip, now=now, reason=reason)
            return Outcome(
                after, [wire.flagged(after, rule=rule, silent_since=action.silent_since)]
            )
        if isinstance(action, liveness.EndRide):
            assert trip.driver_id is not None
            after = domain.end_ride(trip, now=now, reason=reason, last_heard=action.last_heard)
            return Outcome(
                after,
                [wire.completed(after, by=Actor.SYSTEM, rule=rule, reason=reason)],
            )
        outcome: Outcome
        if isinstance(action, liveness.Exhaust):
            after = domain.exhaust(trip, now=now, reason=reason)
            radius = self._settings.radius_steps_m[-1]
            events = [
                *wire.offers_ended(trip, OfferEndReason.TRIP_ENDED),
                wire.no_drivers(after, max_radius_m=radius, rule=rule),
            ]
            outcome = Outcome(after, events)
        else:
            after, _fee = domain.cancel(
                trip, actor=Actor.SYSTEM, actor_id="", now=now, reason=reason
            )
            outcome = Outcome(
                after,
                [
                    *wire.offers_ended(trip, OfferEndReason.TRIP_CANCELLED),
                    wire.cancelled(trip, after, actor_id="", rule=rule),
                ],
            )
        return outcome

    # --- the transaction --------------------------------------------------------------------

    async def _run(
        self,
        trip_id: str,
        guard: Guard,
        *,
        viewer: Viewer | None = None,
        claim: tuple[str, str] | None = None,
    ) -> Trip:
        """Load, decide, save (version-checked) in one transaction; start over on a conflict.

        ``viewer`` is the caller, when not the service itself: a trip they may not see is
        NotFoundError as a missing one is, before the guard looks at anything (the domain
        module's check order). ``claim`` (consumer, key) makes it an event's idempotent
        effect: recorded in the same transaction, and skipped when recorded already.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._store.transaction() as conn:
                    before = await self._store.get_trip(conn, trip_id)
                    if before is None:
                        raise domain.trip_not_found()
                    if viewer is not None:
                        domain.check_visible(before, viewer)
                    if claim is not None and not await claim_event(
                        conn, consumer=claim[0], event_id=claim[1]
                    ):
                        return before
                    outcome = guard(before, self._clock())
                    if outcome.trip is before:
                        return before
                    await self._store.save(conn, before, outcome.trip, events=outcome.events)
            except ConcurrencyError:
                if attempt == _ATTEMPTS:
                    raise
                continue
            if outcome.dispatch:
                self._dispatcher.kick(trip_id)
            return outcome.trip
        raise AssertionError("unreachable")
