"""The trip service's rules: quotes, trips, the guards around every transition, dispatch.

Pure: no I/O, no clock, no randomness. Callers pass ``now`` (an aware datetime) and new ids.
Every guard checks its preconditions, asks ``machine.next_state`` for the target state and
returns a *new* ``Trip`` with ``version + 1`` and one more history record; on any failure it
raises a ``TripError`` and the trip passed in is untouched (it is frozen anyway).

Before any guard, ``check_visible``: a caller who may not see the trip (``may_see``) gets the
NotFoundError a trip that does not exist gets, word for word, so no answer tells the two apart
or shows the state. Check order in the guards: malformed input first (``InvalidArgumentError``);
then who the caller is where that does not depend on the state (the trip's rider); then the
state (``InvalidTransition``); then who the caller is where the state decides it (the offered
or the assigned driver); then the data the state holds (offer id, expiry, ratings).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any

from trip.errors import (
    AlreadyRatedError,
    ConcurrencyError,
    DriverUnavailableError,
    InvalidArgumentError,
    InvalidTransition,
    NotFoundError,
    OfferExpiredError,
    OfferMismatchError,
    PermissionDeniedError,
    QuoteExpiredError,
    QuoteUsedError,
    RiderHasLiveTripError,
    TripError,
)
from trip.machine import LIVE_STATES, Actor, Command, TripState, next_state
from trip.pricing import (
    DEFAULT_FARE_BAND,
    TARIFFS,
    FareBand,
    FareRule,
    FareSettlement,
    LatLng,
    Money,
    Tariff,
    TrackMeasurement,
    VehicleClass,
    estimate_route,
    quote_price,
    quote_settlement,
    settle_fare,
)

__all__ = [
    "DEFAULT_CANCELLATION_POLICY",
    "DEFAULT_DISPATCH_PLAN",
    "OFFER_TIMEOUT",
    "QUOTE_TTL",
    "Actor",
    "AlreadyRatedError",
    "Assignment",
    "CancellationPolicy",
    "Command",
    "ConcurrencyError",
    "DispatchPlan",
    "DispatchStep",
    "DriverUnavailableError",
    "FareBand",
    "FareBasis",
    "FareRule",
    "FareSettlement",
    "GiveUp",
    "InvalidArgumentError",
    "InvalidTransition",
    "LatLng",
    "Money",
    "Nearby",
    "NotFoundError",
    "Offer",
    "OfferEndReason",
    "OfferExpiredError",
    "OfferMismatchError",
    "OfferTo",
    "PermissionDeniedError",
    "Quote",
    "QuoteExpiredError",
    "QuoteUsedError",
    "RiderHasLiveTripError",
    "TrackMeasurement",
    "Transition",
    "Trip",
    "TripError",
    "TripState",
    "VehicleClass",
    "Viewer",
    "Widen",
    "accept",
    "arrive",
    "cancel",
    "check_visible",
    "complete",
    "decline",
    "dispatch",
    "driver_cancel",
    "end_ride",
    "exhaust",
    "expire_offer",
    "flag",
    "make_quote",
    "may_see",
    "next_dispatch_step",
    "offer",
    "rate",
    "reassign",
    "repeated_booking",
    "request_trip",
    "start",
    "trip_not_found",
]

QUOTE_TTL = timedelta(minutes=2)
"""How long a quote can be booked."""

OFFER_TIMEOUT = timedelta(seconds=15)
"""How long a driver has to accept an offer (``RIDESHARE_OFFER_TIMEOUT_S`` overrides it)."""


# --- values ------------------------------------------------------------------------------


class FareBasis(StrEnum):
    """What a final fare was priced from; the value is what the store writes."""

    METERED = "METERED"
    """The ride's measured distance and duration, within (or held to) the band around the
    quote (``FareRule.WITHIN_BAND``, ``BELOW_BAND``)."""
    QUOTE = "QUOTE"
    """The upfront quote: measured above the band, not measured, or a ride the system ended
    because the driver's app fell silent."""


@dataclass(frozen=True, slots=True)
class Quote:
    """An upfront price for one rider and route; books at most one trip before it expires."""

    quote_id: str
    rider_id: str
    pickup: LatLng
    dropoff: LatLng
    vehicle_class: VehicleClass
    price: Money
    surge_multiplier: float
    distance_m: int
    duration_s: int
    created_at: datetime
    expires_at: datetime
    trip_id: str | None = None
    """The trip it booked; set by the store when a trip is requested with it."""


@dataclass(frozen=True, slots=True)
class Offer:
    """The trip offered to one driver, pending until accepted, declined or expired."""

    offer_id: str
    driver_id: str
    attempt: int
    offered_at: datetime
    expires_at: datetime
    slot: int = 0
    """Its place among the trip's parallel offers, 0 .. parallel - 1: no two pending offers
    of a trip share one (the store's unique index holds a trip to ``parallel`` of them)."""


class OfferEndReason(StrEnum):
    """Why a pending offer ended without being accepted (trip.offer_ended)."""

    EXPIRED = "EXPIRED"
    DECLINED = "DECLINED"
    TRIP_CANCELLED = "TRIP_CANCELLED"
    DRIVER_OFFLINE = "DRIVER_OFFLINE"
    TRIP_ENDED = "TRIP_ENDED"
    ACCEPTED_ELSEWHERE = "ACCEPTED_ELSEWHERE"


@dataclass(frozen=True, slots=True)
class Nearby:
    """One search hit: an available driver and their distance to the pickup."""

    driver_id: str
    distance_m: float


@dataclass(frozen=True, slots=True)
class Assignment:
    """A driver held by a live trip: assigned to it (``offered`` False) or offered it."""

    driver_id: str
    trip_id: str
    offered: bool


@dataclass(frozen=True, slots=True)
class Transition:
    """One history record: who moved the trip from which state to which, when and why."""

    from_state: TripState | None  # None for the request that created the trip
    to_state: TripState
    command: str
    actor: Actor
    actor_id: str  # empty for SYSTEM
    reason: str
    version: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Trip:
    """A trip, as of one version. Guards return new instances; nothing mutates one."""

    id: str
    rider_id: str
    vehicle_class: VehicleClass
    state: TripState
    version: int
    quote_id: str
    pickup: LatLng
    dropoff: LatLng
    quoted_fare: Money
    surge_multiplier: float
    estimated_distance_m: int
    estimated_duration_s: int
    requested_at: datetime
    pickup_address: str = ""
    dropoff_address: str = ""
    driver_id: str | None = None
    offers: tuple[Offer, ...] = ()
    """The pending offers, oldest first: each to a different driver, at most the dispatch
    plan's ``parallel_offers`` of them; empty unless DISPATCHING."""
    offer_attempts: int = 0
    """Offers made since dispatch (re)started; the next offer's ``attempt`` is this + 1."""
    excluded_driver_ids: frozenset[str] = frozenset()
    """Drivers never to be offered this trip again: they declined, let an offer lapse or
    cancelled."""
    dispatch_started_at: datetime | None = None
    final_fare: Money | None = None
    distance_m: int | None = None
    duration_s: int | None = None
    cancellation_fee: Money | None = None
    cancelled_by: Actor | None = None
    cancel_reason: str = ""
    rider_rating: int | None = None
    """Stars the rider gave the driver."""
    driver_rating: int | None = None
    """Stars the driver gave the rider."""
    accepted_at: datetime | None = None
    arrived_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    ended_at: datetime | None = None
    fare_basis: FareBasis | None = None
    """What ``final_fare`` was priced from; None until the ride ends."""
    flagged_at: datetime | None = None
    """When the system last flagged the ride for an operator (its driver went silent, or its
    fare was settled outside the band around the quote)."""
    flag_reason: str = ""
    settlement: FareSettlement | None = None
    """How ``final_fare`` was settled and from what; None until the ride ends (and for rides
    completed before settlements were recorded)."""
    history: tuple[Transition, ...] = ()
    """Transitions oldest first; a store may load only a suffix, the last one is always the
    latest guard's."""

    @property
    def is_live(self) -> bool:
        """Whether the trip has not ended yet (it holds its rider, and maybe a driver)."""
        return self.state in LIVE_STATES

    @property
    def offer(self) -> Offer | None:
        """The first pending offer (the only one unless offers go out in parallel)."""
        return self.offers[0] if self.offers else None

    def pending_offer(self, offer_id: str) -> Offer | None:
        """The pending offer ``offer_id``, or None."""
        return next((o for o in self.offers if o.offer_id == offer_id), None)


@dataclass(frozen=True, slots=True)
class CancellationPolicy:
    """When a rider's cancellation costs a fee: once a driver accepted more than ``grace`` ago."""

    grace: timedelta = timedelta(minutes=2)


DEFAULT_CANCELLATION_POLICY = CancellationPolicy()


# --- quotes and requests -------------------------------------------------------------------


def make_quote(
    *,
    quote_id: str,
    rider_id: str,
    pickup: LatLng,
    dropoff: LatLng,
    vehicle_class: VehicleClass,
    surge: float,
    now: datetime,
    ttl: timedelta = QUOTE_TTL,
    tariff: Tariff | None = None,
) -> Quote:
    """Price a ride upfront for ``rider_id``; valid from ``now`` for ``ttl``.

    ``tariff`` defaults to the class's entry in ``TARIFFS``; ``surge`` is the pickup area's
    current multiplier (``pricing.surge_multiplier``).
    """
    _check_clock(now)
    if not rider_id:
        raise InvalidArgumentError("rider id is empty")
    distance_m, duration_s = estimate_route(pickup, dropoff)
    price = quote_price(distance_m, duration_s, tariff or TARIFFS[vehicle_class], surge)
    return Quote(
        quote_id=quote_id,
        rider_id=rider_id,
        pickup=pickup,
        dropoff=dropoff,
        vehicle_class=vehicle_class,
        price=price,
        surge_multiplier=surge,
        distance_m=distance_m,
        duration_s=duration_s,
        created_at=now,
        expires_at=now + ttl,
    )


def repeated_booking(quote: Quote, *, rider_id: str, pickup: LatLng, dropoff: LatLng) -> str | None:
    """The trip that an identical earlier booking of ``quote`` made, or None.

    A phone that lost the answer to its booking (a timeout, a dropped connection) books the
    same quote again: that is the same request, and it gets the trip it made, never a
    second trip and never "quote used". Anyone else, or another route, is not a repeat.
    """
    same = quote.rider_id == rider_id and (pickup, dropoff) == (quote.pickup, quote.dropoff)
    return quote.trip_id if same else None


def request_trip(
    quote: Quote,
    *,
    trip_id: str,
    rider_id: str,
    pickup: LatLng,
    dropoff: LatLng,
    now: datetime,
    rider_has_live_trip: bool = False,
    pickup_address: str = "",
    dropoff_address: str = "",
) -> Trip:
    """A new REQUESTED trip (version 1) booked at ``quote``'s price.

    Only the quote's rider may book it, for the quote's route, once, before it expires, and
    only while the rider has no live trip. The store enforces "once" and "one live trip"
    again atomically; these checks give the precise error in the common case.
    """
    _check_clock(now)
    if quote.rider_id != rider_id:
        raise PermissionDeniedError(f"quote {quote.quote_id} is not rider {rider_id}'s")
    if (pickup, dropoff) != (quote.pickup, quote.dropoff):
        raise InvalidArgumentError(f"pickup/dropoff differ from quote {quote.quote_id}'s")
    if quote.trip_id is not None:
        raise QuoteUsedError(f"quote {quote.quote_id} booked trip {quote.trip_id} already")
    if now >= quote.expires_at:
        raise QuoteExpiredError(f"quote {quote.quote_id} expired at {quote.expires_at.isoformat()}")
    if rider_has_live_trip:
        raise RiderHasLiveTripError(f"rider {rider_id} has a live trip already")
    return Trip(
        id=trip_id,
        rider_id=rider_id,
        vehicle_class=quote.vehicle_class,
        state=TripState.REQUESTED,
        version=1,
        quote_id=quote.quote_id,
        pickup=pickup,
        dropoff=dropoff,
        quoted_fare=quote.price,
        surge_multiplier=quote.surge_multiplier,
        estimated_distance_m=quote.distance_m,
        estimated_duration_s=quote.duration_s,
        requested_at=now,
        pickup_address=pickup_address,
        dropoff_address=dropoff_address,
        history=(
            Transition(None, TripState.REQUESTED, "request", Actor.RIDER, rider_id, "", 1, now),
        ),
    )


# --- dispatch ------------------------------------------------------------------------------


def dispatch(trip: Trip, *, now: datetime) -> Trip:
    """REQUESTED -> DISPATCHING: the search for a driver begins."""
    _check_clock(now)
    target = next_state(trip.state, Command.DISPATCH, Actor.SYSTEM)
    return _advance(trip, target, Command.DISPATCH, Actor.SYSTEM, now=now, dispatch_started_at=now)


def offer(
    trip: Trip,
    *,
    offer_id: str,
    driver_id: str,
    now: datetime,
    timeout: timedelta = OFFER_TIMEOUT,
    parallel: int = 1,
) -> Trip:
    """Offer the DISPATCHING trip to ``driver_id`` until ``now + timeout``.

    Up to ``parallel`` offers at a time, each to a different driver: with that many pending,
    one must be accepted, declined or expired first. A driver excluded from this trip is
    never offered it again.
    """
    _check_clock(now)
    if timeout <= timedelta(0):
        raise InvalidArgumentError(f"offer timeout {timeout} is not positive")
    if not driver_id:
        raise InvalidArgumentError("driver id is empty")
    target = next_state(trip.state, Command.OFFER, Actor.SYSTEM)
    if len(trip.offers) >= parallel:
        raise OfferMismatchError(f"trip {trip.id} has offer {trip.offers[-1].offer_id} pending")
    if driver_id in trip.excluded_driver_ids:
        raise InvalidArgumentError(f"driver {driver_id} is excluded from trip {trip.id}")
    if any(o.driver_id == driver_id for o in trip.offers):
        raise InvalidArgumentError(f"driver {driver_id} has trip {trip.id}'s offer already")
    attempt = trip.offer_attempts + 1
    slot = min(set(range(parallel)) - {o.slot for o in trip.offers})
    new_offer = Offer(offer_id, driver_id, attempt, now, now + timeout, slot)
    return _advance(
        trip,
        target,
        Command.OFFER,
        Actor.SYSTEM,
        now=now,
        reason=f"attempt {attempt} to driver {driver_id}",
        offers=(*trip.offers, new_offer),
        offer_attempts=attempt,
    )


def accept(trip: Trip, *, driver_id: str, offer_id: str, now: datetime) -> Trip:
    """The offered driver accepts the pending, unexpired offer: DISPATCHING -> ACCEPTED. The
    trip's other pending offers end with it (the caller tells their drivers)."""
    _check_clock(now)
    target = next_state(trip.state, Command.OFFER_ACCEPTED, Actor.DRIVER)
    _check_pending_offer(trip, driver_id=driver_id, offer_id=offer_id, now=now)
    return _advance(
        trip,
        target,
        Command.OFFER_ACCEPTED,
        Actor.DRIVER,
        now=now,
        actor_id=driver_id,
        driver_id=driver_id,
        offers=(),
        accepted_at=now,
    )


def decline(trip: Trip, *, driver_id: str, offer_id: str, now: datetime, reason: str = "") -> Trip:
    """The offered driver declines: the offer ends, the driver is excluded, dispatch goes on
    (once the trip's other parallel offers, if any, have ended too)."""
    _check_clock(now)
    target = next_state(trip.state, Command.OFFER_DECLINED, Actor.DRIVER)
    _check_pending_offer(trip, driver_id=driver_id, offer_id=offer_id, now=now)
    return _advance(
        trip,
        target,
        Command.OFFER_DECLINED,
        Actor.DRIVER,
        now=now,
        actor_id=driver_id,
        reason=reason,
        offers=_without(trip.offers, offer_id),
        excluded_driver_ids=trip.excluded_driver_ids | {driver_id},
    )


def expire_offer(
    trip: Trip, *, offer_id: str, now: datetime, reason: str = "offer expired"
) -> Trip:
    """SYSTEM ends the pending offer ``offer_id``: its driver is excluded, dispatch goes on.

    The caller decides when: the offer timer firing, or the offered driver going offline. A
    stale timer (the offer was answered or replaced) gets ``OfferMismatchError``.
    """
    _check_clock(now)
    target = next_state(trip.state, Command.OFFER_EXPIRED, Actor.SYSTEM)
    pending = trip.pending_offer(offer_id)
    if pending is None:
        raise OfferMismatchError(f"offer {offer_id} is not trip {trip.id}'s pending offer")
    return _advance(
        trip,
        target,
        Command.OFFER_EXPIRED,
        Actor.SYSTEM,
        now=now,
        reason=reason,
        offers=_without(trip.offers, offer_id),
        excluded_driver_ids=trip.excluded_driver_ids | {pending.driver_id},
    )


def exhaust(trip: Trip, *, now: datetime, reason: str) -> Trip:
    """Dispatch gives up: DISPATCHING -> NO_DRIVERS (terminal); a pending offer is dropped."""
    _check_clock(now)
    target = next_state(trip.state, Command.EXHAUST, Actor.SYSTEM)
    return _advance(
        trip,
        target,
        Command.EXHAUST,
        Actor.SYSTEM,
        now=now,
        reason=reason,
        offers=(),
        ended_at=now,
    )


# --- the ride ------------------------------------------------------------------------------


def arrive(trip: Trip, *, driver_id: str, now: datetime) -> Trip:
    """The assigned driver is at the pickup: ACCEPTED -> ARRIVED."""
    _check_clock(now)
    target = next_state(trip.state, Command.ARRIVE, Actor.DRIVER)
    _check_assigned(trip, driver_id)
    return _advance(
        trip, target, Command.ARRIVE, Actor.DRIVER, now=now, actor_id=driver_id, arrived_at=now
    )


def start(trip: Trip, *, driver_id: str, now: datetime) -> Trip:
    """The assigned driver starts the ride: ARRIVED -> IN_PROGRESS."""
    _check_clock(now)
    target = next_state(trip.state, Command.START, Actor.DRIVER)
    _check_assigned(trip, driver_id)
    return _advance(
        trip, target, Command.START, Actor.DRIVER, now=now, actor_id=driver_id, started_at=now
    )


def complete(
    trip: Trip,
    *,
    driver_id: str,
    now: datetime,
    track: TrackMeasurement | None = None,
    band: FareBand = DEFAULT_FARE_BAND,
    reported_distance_m: int | None = None,
    reported_duration_s: int | None = None,
    tariff: Tariff | None = None,
) -> Trip:
    """The assigned driver ends the ride: IN_PROGRESS -> COMPLETED, with the final fare.

    The fare is settled by ``pricing.settle_fare`` from what the service measured itself:
    ``track`` (the location service's distance, None when it could not say) and this clock
    from ``start`` to ``now``. The figures the driver's app reported are recorded beside
    them and never priced. A settlement outside the band flags the ride for review.
    """
    _check_clock(now)
    target = next_state(trip.state, Command.COMPLETE, Actor.DRIVER)
    _check_assigned(trip, driver_id)
    started = trip.started_at or now
    duration_s = max(0, round((now - started).total_seconds()))
    settlement = settle_fare(
        quoted=trip.quoted_fare,
        quoted_distance_m=trip.estimated_distance_m,
        quoted_duration_s=trip.estimated_duration_s,
        duration_s=duration_s,
        track=track,
        tariff=tariff or TARIFFS[trip.vehicle_class],
        surge=trip.surge_multiplier,
        band=band,
        reported_distance_m=reported_distance_m,
        reported_duration_s=reported_duration_s,
    )
    flagged: dict[str, Any] = {}
    if settlement.flagged:
        flagged = {"flagged_at": now, "flag_reason": _review_reason(settlement)}
    return _advance(
        trip,
        target,
        Command.COMPLETE,
        Actor.DRIVER,
        now=now,
        actor_id=driver_id,
        final_fare=settlement.charged,
        fare_basis=(
            FareBasis.METERED
            if settlement.rule in (FareRule.WITHIN_BAND, FareRule.BELOW_BAND)
            else FareBasis.QUOTE
        ),
        settlement=settlement,
        distance_m=(
            settlement.measured_distance_m
            if settlement.measured_distance_m is not None
            else trip.estimated_distance_m
        ),
        duration_s=duration_s,
        completed_at=now,
        ended_at=now,
        **flagged,
    )


def _review_reason(settlement: FareSettlement) -> str:
    measured = settlement.measured_fare
    side = "above" if settlement.rule is FareRule.ABOVE_BAND else "below"
    return (
        f"fare review: measured price {measured.amount_minor if measured else '-'} is {side} "
        f"the band [{settlement.band_low.amount_minor}, {settlement.band_high.amount_minor}] "
        f"around the quote {settlement.quoted.amount_minor}; charged "
        f"{settlement.charged.amount_minor} {settlement.charged.currency}"
    )


def flag(trip: Trip, *, now: datetime, reason: str) -> Trip:
    """SYSTEM flags an IN_PROGRESS ride for an operator (its driver went silent); the ride
    goes on. Records when and why on the trip and in its history."""
    _check_clock(now)
    target = next_state(trip.state, Command.FLAG, Actor.SYSTEM)
    return _advance(
        trip,
        target,
        Command.FLAG,
        Actor.SYSTEM,
        now=now,
        reason=reason,
        flagged_at=now,
        flag_reason=reason,
    )


def end_ride(trip: Trip, *, now: datetime, reason: str, last_heard: datetime | None) -> Trip:
    """SYSTEM ends an IN_PROGRESS ride whose driver is gone: IN_PROGRESS -> COMPLETED.

    Nothing measured the ride, so the rider pays the upfront quote, never more
    (``FareBasis.QUOTE``). The duration recorded runs from the start to ``last_heard`` (the
    driver's last sign of life, ``now`` when unknown); the distance is the quote's estimate.
    """
    _check_clock(now)
    target = next_state(trip.state, Command.COMPLETE, Actor.SYSTEM)
    until = min(last_heard, now) if last_heard is not None else now
    started = trip.started_at or until
    duration_s = max(0, round((until - started).total_seconds()))
    return _advance(
        trip,
        target,
        Command.COMPLETE,
        Actor.SYSTEM,
        now=now,
        reason=reason,
        final_fare=trip.quoted_fare,
        fare_basis=FareBasis.QUOTE,
        settlement=quote_settlement(
            quoted=trip.quoted_fare,
            quoted_distance_m=trip.estimated_distance_m,
            quoted_duration_s=trip.estimated_duration_s,
            duration_s=duration_s,
            rule=FareRule.DRIVER_SILENT,
        ),
        distance_m=trip.estimated_distance_m,
        duration_s=duration_s,
        completed_at=now,
        ended_at=now,
    )


# --- who may see a trip --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who reads a trip or acts on it: a rider, a driver or an admin with their id, or SYSTEM
    (another service; its id is empty)."""

    actor: Actor
    actor_id: str = ""


def may_see(trip: Trip, viewer: Viewer) -> bool:
    """Whether ``viewer`` may see ``trip`` at all: its rider, its assigned driver, the driver
    its pending offer is for, any admin and the system. A driver whose offer ended, or who
    was taken off the trip, no longer may."""
    actor, actor_id = viewer.actor, viewer.actor_id
    if actor in (Actor.ADMIN, Actor.SYSTEM):
        return True
    if not actor_id:
        return False
    if actor is Actor.RIDER:
        return actor_id == trip.rider_id
    return actor_id == trip.driver_id or any(o.driver_id == actor_id for o in trip.offers)


def trip_not_found() -> NotFoundError:
    """The one answer for a trip that does not exist and for a trip the caller may not see:
    the same words for both (and no id), so that neither can be told from the other."""
    return NotFoundError("trip not found")


def check_visible(trip: Trip, viewer: Viewer) -> None:
    """:func:`trip_not_found` unless ``viewer`` may see ``trip`` (:func:`may_see`)."""
    if not may_see(trip, viewer):
        raise trip_not_found()


# --- cancellation and rating ---------------------------------------------------------------


def cancel(
    trip: Trip,
    *,
    actor: Actor,
    actor_id: str,
    now: datetime,
    reason: str = "",
    policy: CancellationPolicy = DEFAULT_CANCELLATION_POLICY,
    tariff: Tariff | None = None,
) -> tuple[Trip, Money | None]:
    """End a live trip as CANCELLED; returns the trip and the rider's fee (None when free).

    The rider (only the trip's own) may cancel until the ride starts, and pays the class's
    cancellation fee once a driver accepted more than ``policy.grace`` ago. SYSTEM and ADMIN
    cancel without a fee (SYSTEM not once the ride is IN_PROGRESS, see ``machine``). A driver
    does not cancel a trip: ``driver_cancel`` sends it back to dispatch.
    """
    _check_clock(now)
    if actor is Actor.RIDER and actor_id != trip.rider_id:
        raise PermissionDeniedError(f"rider {actor_id} is not trip {trip.id}'s rider")
    if actor is Actor.ADMIN and not actor_id:
        raise InvalidArgumentError("an admin cancellation needs the admin's id")
    target = next_state(trip.state, Command.CANCEL, actor)
    fee = None
    if (
        actor is Actor.RIDER
        and trip.accepted_at is not None
        and trip.state in (TripState.ACCEPTED, TripState.ARRIVED)
        and now - trip.accepted_at > policy.grace
    ):
        fee_tariff = tariff or TARIFFS[trip.vehicle_class]
        fee = Money(fee_tariff.cancellation_fee, fee_tariff.currency)
    cancelled = _advance(
        trip,
        target,
        Command.CANCEL,
        actor,
        now=now,
        actor_id="" if actor is Actor.SYSTEM else actor_id,
        reason=reason,
        offers=(),
        cancelled_by=actor,
        cancel_reason=reason,
        cancelled_at=now,
        ended_at=now,
        cancellation_fee=fee,
    )
    return cancelled, fee


def driver_cancel(
    trip: Trip,
    *,
    driver_id: str,
    now: datetime,
    reason: str = "",
    actor: Actor = Actor.DRIVER,
) -> Trip:
    """The assigned driver drops the trip before pickup: back to DISPATCHING without them.

    ``driver_id`` must be the assigned driver; it is cleared and excluded from this trip, and
    dispatch restarts (its attempt count and clock too) so the rider is not stranded. SYSTEM
    may do this for the assigned driver going offline.
    """
    _check_clock(now)
    target = next_state(trip.state, Command.DRIVER_CANCEL, actor)
    _check_assigned(trip, driver_id)
    return _without_driver(
        trip,
        target,
        Command.DRIVER_CANCEL,
        actor,
        now=now,
        actor_id=driver_id if actor is Actor.DRIVER else "",
        reason=reason,
    )


def reassign(trip: Trip, *, driver_id: str, now: datetime, reason: str) -> Trip:
    """SYSTEM takes an ACCEPTED or ARRIVED trip from ``driver_id`` (silent, or never reached
    the pickup): back to DISPATCHING without them, exactly as after ``driver_cancel``.

    ``driver_id`` is the driver the caller's decision was about; if the trip has another
    driver by now, that decision is stale and this raises ``PermissionDeniedError``.
    """
    _check_clock(now)
    target = next_state(trip.state, Command.REASSIGN, Actor.SYSTEM)
    _check_assigned(trip, driver_id)
    return _without_driver(trip, target, Command.REASSIGN, Actor.SYSTEM, now=now, reason=reason)


def _without_driver(
    trip: Trip,
    target: TripState,
    command: Command,
    actor: Actor,
    *,
    now: datetime,
    reason: str,
    actor_id: str = "",
) -> Trip:
    """``trip`` back in dispatch: its driver cleared and excluded, dispatch's clock restarted."""
    assert trip.driver_id is not None
    return _advance(
        trip,
        target,
        command,
        actor,
        now=now,
        actor_id=actor_id,
        reason=reason,
        driver_id=None,
        excluded_driver_ids=trip.excluded_driver_ids | {trip.driver_id},
        offer_attempts=0,
        dispatch_started_at=now,
        accepted_at=None,
        arrived_at=None,
    )


def rate(trip: Trip, *, side: Actor, actor_id: str, stars: int) -> Trip:
    """One side of a COMPLETED trip rates the other, 1 to 5 stars, once.

    ``side`` RIDER (the trip's rider) rates the driver; DRIVER (the trip's driver) rates the
    rider. A rating is not a state change: the version goes up, the history does not grow.
    """
    if side not in (Actor.RIDER, Actor.DRIVER):
        raise InvalidArgumentError(f"only the rider or the driver rates a trip, not {side}")
    if type(stars) is not int or not 1 <= stars <= 5:
        raise InvalidArgumentError(f"stars {stars!r} is not an integer from 1 to 5")
    party = trip.rider_id if side is Actor.RIDER else trip.driver_id
    if actor_id != party:
        raise PermissionDeniedError(f"{actor_id} is not trip {trip.id}'s {side.lower()}")
    if trip.state is not TripState.COMPLETED:
        raise InvalidTransition(f"cannot rate when state={trip.state}")
    if side is Actor.RIDER:
        if trip.rider_rating is not None:
            raise AlreadyRatedError(f"the rider rated trip {trip.id} already")
        return replace(trip, version=trip.version + 1, rider_rating=stars)
    if trip.driver_rating is not None:
        raise AlreadyRatedError(f"the driver rated trip {trip.id} already")
    return replace(trip, version=trip.version + 1, driver_rating=stars)


# --- the dispatch plan ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispatchPlan:
    """How far and how long dispatch looks for a driver before NO_DRIVERS."""

    radius_steps_m: tuple[int, ...] = (2000, 5000, 10000)
    offer_timeout: timedelta = OFFER_TIMEOUT
    candidates_per_search: int = 10
    """How many of the nearest available drivers one search asks location for."""
    max_offers: int = 10
    """Offers per dispatch round; one round is at most ``max_offers * offer_timeout`` long."""
    max_wait: timedelta = timedelta(minutes=3)
    """Time since dispatch (re)started after which no new offer is made."""
    parallel_offers: int = 1
    """Offers out at once, to different drivers; the next ones go out when all have ended."""

    def __post_init__(self) -> None:
        steps = self.radius_steps_m
        if not steps or steps[0] <= 0 or any(a >= b for a, b in pairwise(steps)):
            raise InvalidArgumentError(f"radius steps {steps} are not positive and increasing")
        if self.offer_timeout <= timedelta(0) or self.max_wait <= timedelta(0):
            raise InvalidArgumentError("offer timeout and max wait must be positive")
        if self.candidates_per_search < 1 or self.max_offers < 1 or self.parallel_offers < 1:
            raise InvalidArgumentError(
                "candidates per search, max offers and parallel offers must be >= 1"
            )


DEFAULT_DISPATCH_PLAN = DispatchPlan()


@dataclass(frozen=True, slots=True)
class OfferTo:
    """Next: offer the trip to this driver (found within ``radius_steps_m[radius_index]``)."""

    driver_id: str
    radius_index: int


@dataclass(frozen=True, slots=True)
class Widen:
    """Next: search again within the larger radius ``radius_m``."""

    radius_index: int
    radius_m: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Next: end the trip as NO_DRIVERS (``exhaust``) with this reason."""

    reason: str


DispatchStep = OfferTo | Widen | GiveUp


def next_dispatch_step(
    trip: Trip,
    candidates: Sequence[str],
    *,
    radius_index: int,
    now: datetime,
    plan: DispatchPlan = DEFAULT_DISPATCH_PLAN,
    skip: Set[str] = frozenset(),
) -> DispatchStep:
    """What dispatch does next for a DISPATCHING trip with room for another offer (fewer than
    ``plan.parallel_offers`` pending).

    ``candidates`` are the available drivers the last search found within
    ``plan.radius_steps_m[radius_index]``, nearest first. The first one neither excluded
    from the trip nor in ``skip`` (e.g. just reserved by another trip) gets the offer; with
    none, the radius widens; past the last step, or past ``plan.max_offers`` or
    ``plan.max_wait``, dispatch gives up. After an offer ends, search again at the same
    radius: nearer drivers may have become free. A driver already offered the trip is
    passed over. (The caller filling a batch of parallel offers stops at the first Widen or
    GiveUp once it has one.)
    """
    _check_clock(now)
    if trip.state is not TripState.DISPATCHING:
        raise InvalidTransition(f"cannot {Command.OFFER} when state={trip.state}")
    if len(trip.offers) >= plan.parallel_offers:
        raise OfferMismatchError(f"trip {trip.id} has offer {trip.offers[-1].offer_id} pending")
    if not 0 <= radius_index < len(plan.radius_steps_m):
        raise InvalidArgumentError(f"radius index {radius_index} is outside the plan")
    if trip.offer_attempts >= plan.max_offers:
        return GiveUp(f"no driver accepted any of {trip.offer_attempts} offers")
    started = trip.dispatch_started_at or trip.requested_at
    if now - started >= plan.max_wait:
        return GiveUp(f"no driver accepted within {plan.max_wait.total_seconds():g} s")
    offered = {o.driver_id for o in trip.offers}
    for driver_id in candidates:
        if not (driver_id in trip.excluded_driver_ids or driver_id in skip or driver_id in offered):
            return OfferTo(driver_id, radius_index)
    if radius_index + 1 < len(plan.radius_steps_m):
        return Widen(radius_index + 1, plan.radius_steps_m[radius_index + 1])
    return GiveUp(f"no drivers within {plan.radius_steps_m[-1] / 1000:g} km")


# --- helpers -------------------------------------------------------------------------------


def _check_clock(now: datetime) -> None:
    # Naive datetimes compare wrongly with the store's timestamptz values; refuse them early.
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgumentError(f"time {now.isoformat()} has no timezone")


def _without(offers: tuple[Offer, ...], offer_id: str) -> tuple[Offer, ...]:
    return tuple(o for o in offers if o.offer_id != offer_id)


def _check_pending_offer(trip: Trip, *, driver_id: str, offer_id: str, now: datetime) -> None:
    if not trip.offers:
        raise OfferExpiredError(f"trip {trip.id} has no pending offer")
    pending = trip.pending_offer(offer_id)
    if pending is None:
        raise OfferMismatchError(f"offer {offer_id} is not trip {trip.id}'s pending offer")
    if pending.driver_id != driver_id:
        raise PermissionDeniedError(f"offer {offer_id} is not driver {driver_id}'s")
    if now >= pending.expires_at:
        raise OfferExpiredError(f"offer {offer_id} expired at {pending.expires_at.isoformat()}")


def _check_assigned(trip: Trip, driver_id: str) -> None:
    if trip.driver_id is None or driver_id != trip.driver_id:
        raise PermissionDeniedError(f"driver {driver_id} is not assigned to trip {trip.id}")


def _advance(
    trip: Trip,
    target: TripState,
    command: Command,
    actor: Actor,
    *,
    now: datetime,
    actor_id: str = "",
    reason: str = "",
    **changes: Any,
) -> Trip:
    """``trip`` moved to ``target``: version + 1, one history record, and ``changes``."""
    version = trip.version + 1
    record = Transition(trip.state, target, command.value, actor, actor_id, reason, version, now)
    return replace(trip, state=target, version=version, history=(*trip.history, record), **changes)
