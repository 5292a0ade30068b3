"""The guards around every trip transition: who may act, on which offer, at what price.

Trips are built by walking the real guards from a quote, on a fixed clock, so each test
starts from a state the service could actually be in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trip.domain import (
    DEFAULT_DISPATCH_PLAN,
    AlreadyRatedError,
    CancellationPolicy,
    DispatchPlan,
    FareBasis,
    FareRule,
    GiveUp,
    InvalidArgumentError,
    InvalidTransition,
    LatLng,
    Money,
    OfferExpiredError,
    OfferMismatchError,
    OfferTo,
    PermissionDeniedError,
    Quote,
    QuoteExpiredError,
    QuoteUsedError,
    RiderHasLiveTripError,
    TrackMeasurement,
    Trip,
    TripError,
    TripState,
    VehicleClass,
    Viewer,
    Widen,
    accept,
    arrive,
    cancel,
    check_visible,
    complete,
    decline,
    dispatch,
    driver_cancel,
    exhaust,
    expire_offer,
    make_quote,
    may_see,
    next_dispatch_step,
    offer,
    rate,
    repeated_booking,
    request_trip,
    start,
    trip_not_found,
)
from trip.errors import ConcurrencyError, NotFoundError
from trip.machine import Actor
from trip.pricing import TARIFFS, estimate_route, quote_price

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PICKUP = LatLng(48.8566, 2.3522)
DROPOFF = LatLng(48.8738, 2.2950)
ACCEPTED_AT = T0 + timedelta(seconds=5)
FEE = Money(TARIFFS[VehicleClass.STANDARD].cancellation_fee, "EUR")


def a_quote(*, rider_id: str = "r1", surge: float = 1.0) -> Quote:
    return make_quote(
        quote_id="q1",
        rider_id=rider_id,
        pickup=PICKUP,
        dropoff=DROPOFF,
        vehicle_class=VehicleClass.STANDARD,
        surge=surge,
        now=T0 - timedelta(seconds=30),
    )


def requested(*, surge: float = 1.0) -> Trip:
    return request_trip(
        a_quote(surge=surge), trip_id="t1", rider_id="r1", pickup=PICKUP, dropoff=DROPOFF, now=T0
    )


def dispatching() -> Trip:
    return dispatch(requested(), now=T0 + timedelta(seconds=1))


def offered(driver_id: str = "d1", offer_id: str = "o1") -> Trip:
    return offer(
        dispatching(), offer_id=offer_id, driver_id=driver_id, now=T0 + timedelta(seconds=2)
    )


def accepted() -> Trip:
    return accept(offered(), driver_id="d1", offer_id="o1", now=ACCEPTED_AT)


def arrived() -> Trip:
    return arrive(accepted(), driver_id="d1", now=T0 + timedelta(minutes=5))


def in_progress() -> Trip:
    return start(arrived(), driver_id="d1", now=T0 + timedelta(minutes=6))


def estimate() -> tuple[int, int]:
    return estimate_route(PICKUP, DROPOFF)


def completed(track: TrackMeasurement | None = None, *, after_s: int | None = None) -> Trip:
    """The ride ended by its driver; by default measured exactly as quoted."""
    distance_m, duration_s = estimate()
    return complete(
        in_progress(),
        driver_id="d1",
        now=T0 + timedelta(minutes=6, seconds=duration_s if after_s is None else after_s),
        track=track or TrackMeasurement(distance_m, points=100),
    )


# --- quotes and requests -------------------------------------------------------------------


def test_quote_prices_the_estimated_route_and_expires_after_two_minutes() -> None:
    quote = a_quote(surge=1.4)
    distance_m, duration_s = estimate_route(PICKUP, DROPOFF)
    assert (quote.distance_m, quote.duration_s) == (distance_m, duration_s)
    assert quote.price == quote_price(distance_m, duration_s, TARIFFS[VehicleClass.STANDARD], 1.4)
    assert quote.surge_multiplier == 1.4
    assert quote.expires_at - quote.created_at == timedelta(minutes=2)
    assert quote.trip_id is None


def test_quote_for_an_empty_rider_id_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError):
        a_quote(rider_id="")


def test_requested_trip_starts_at_version_one_with_the_quotes_price() -> None:
    quote = a_quote(surge=1.5)
    trip = request_trip(
        quote,
        trip_id="t1",
        rider_id="r1",
        pickup=PICKUP,
        dropoff=DROPOFF,
        now=T0,
        pickup_address="1 Rue de Rivoli",
    )
    assert trip.state is TripState.REQUESTED
    assert trip.version == 1
    assert trip.quoted_fare == quote.price
    assert trip.surge_multiplier == 1.5
    assert trip.pickup_address == "1 Rue de Rivoli"
    assert trip.is_live
    assert [(h.from_state, h.to_state, h.command) for h in trip.history] == [
        (None, TripState.REQUESTED, "request")
    ]


def test_another_riders_quote_cannot_be_booked() -> None:
    with pytest.raises(PermissionDeniedError):
        request_trip(a_quote(), trip_id="t1", rider_id="r2", pickup=PICKUP, dropoff=DROPOFF, now=T0)


def test_a_quote_cannot_be_booked_for_another_route() -> None:
    with pytest.raises(InvalidArgumentError):
        request_trip(a_quote(), trip_id="t1", rider_id="r1", pickup=PICKUP, dropoff=PICKUP, now=T0)


def test_a_quote_cannot_be_booked_from_the_instant_it_expires() -> None:
    quote = a_quote()
    with pytest.raises(QuoteExpiredError):
        request_trip(
            quote,
            trip_id="t1",
            rider_id="r1",
            pickup=PICKUP,
            dropoff=DROPOFF,
            now=quote.expires_at,
        )


def test_a_quote_books_at_most_one_trip() -> None:
    used = replace(a_quote(), trip_id="t0")
    with pytest.raises(QuoteUsedError):
        request_trip(used, trip_id="t1", rider_id="r1", pickup=PICKUP, dropoff=DROPOFF, now=T0)


def test_rider_with_a_live_trip_cannot_request_another() -> None:
    with pytest.raises(RiderHasLiveTripError):
        request_trip(
            a_quote(),
            trip_id="t1",
            rider_id="r1",
            pickup=PICKUP,
            dropoff=DROPOFF,
            now=T0,
            rider_has_live_trip=True,
        )


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="timezone"):
        dispatch(requested(), now=datetime(2025, 3, 1, 12, 0))


# --- dispatch and offers -------------------------------------------------------------------


def test_offer_is_pending_for_the_offer_timeout() -> None:
    trip = offered()
    assert trip.state is TripState.DISPATCHING
    assert trip.offer is not None
    assert (trip.offer.offer_id, trip.offer.driver_id, trip.offer.attempt) == ("o1", "d1", 1)
    assert trip.offer.expires_at - trip.offer.offered_at == timedelta(seconds=15)
    assert trip.offer_attempts == 1


def test_a_second_offer_cannot_be_made_while_one_is_pending() -> None:
    with pytest.raises(OfferMismatchError):
        offer(offered(), offer_id="o2", driver_id="d2", now=T0 + timedelta(seconds=3))


def test_an_excluded_driver_is_never_offered_the_trip_again() -> None:
    trip = decline(offered(), driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=3))
    with pytest.raises(InvalidArgumentError):
        offer(trip, offer_id="o2", driver_id="d1", now=T0 + timedelta(seconds=4))


def test_a_trip_is_not_offered_before_dispatch_starts() -> None:
    with pytest.raises(InvalidTransition, match="cannot offer when state=REQUESTED"):
        offer(requested(), offer_id="o1", driver_id="d1", now=T0)


def test_offered_driver_accepts_and_is_assigned() -> None:
    trip = accepted()
    assert trip.state is TripState.ACCEPTED
    assert trip.driver_id == "d1"
    assert trip.offer is None
    assert trip.accepted_at == ACCEPTED_AT


def test_another_driver_cannot_accept_the_offer() -> None:
    with pytest.raises(PermissionDeniedError):
        accept(offered(), driver_id="d2", offer_id="o1", now=ACCEPTED_AT)


def test_a_stale_offer_id_cannot_be_accepted() -> None:
    with pytest.raises(OfferMismatchError):
        accept(offered(), driver_id="d1", offer_id="o0", now=ACCEPTED_AT)


def test_an_offer_cannot_be_accepted_from_the_instant_it_expires() -> None:
    trip = offered()
    assert trip.offer is not None
    with pytest.raises(OfferExpiredError):
        accept(trip, driver_id="d1", offer_id="o1", now=trip.offer.expires_at)


def test_an_offer_that_ended_cannot_be_accepted() -> None:
    trip = expire_offer(offered(), offer_id="o1", now=T0 + timedelta(seconds=17))
    with pytest.raises(OfferExpiredError):
        accept(trip, driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=18))


def test_an_offer_for_a_cancelled_trip_cannot_be_accepted() -> None:
    trip, _ = cancel(offered(), actor=Actor.RIDER, actor_id="r1", now=T0 + timedelta(seconds=3))
    with pytest.raises(InvalidTransition, match="cannot accept when state=CANCELLED"):
        accept(trip, driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=4))


def test_an_accepted_trip_cannot_be_accepted_again() -> None:
    with pytest.raises(InvalidTransition, match="cannot accept when state=ACCEPTED"):
        accept(accepted(), driver_id="d1", offer_id="o1", now=ACCEPTED_AT)


def test_declining_driver_is_excluded_and_dispatch_goes_on() -> None:
    trip = decline(offered(), driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=3))
    assert trip.state is TripState.DISPATCHING
    assert trip.offer is None
    assert trip.excluded_driver_ids == {"d1"}


def test_another_driver_cannot_decline_the_offer() -> None:
    with pytest.raises(PermissionDeniedError):
        decline(offered(), driver_id="d2", offer_id="o1", now=T0 + timedelta(seconds=3))


def test_expired_offer_excludes_its_driver() -> None:
    trip = expire_offer(offered(), offer_id="o1", now=T0 + timedelta(seconds=17))
    assert trip.state is TripState.DISPATCHING
    assert trip.offer is None
    assert trip.excluded_driver_ids == {"d1"}
    assert trip.history[-1].reason == "offer expired"


def test_a_stale_expiry_timer_changes_nothing() -> None:
    trip = accepted()
    with pytest.raises(InvalidTransition):
        expire_offer(trip, offer_id="o1", now=T0 + timedelta(seconds=17))
    with pytest.raises(OfferMismatchError):
        expire_offer(offered(offer_id="o2"), offer_id="o1", now=T0 + timedelta(seconds=17))


def test_next_offer_counts_its_attempt() -> None:
    trip = decline(offered(), driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=3))
    trip = offer(trip, offer_id="o2", driver_id="d2", now=T0 + timedelta(seconds=4))
    assert trip.offer is not None
    assert trip.offer.attempt == 2


# --- parallel offers ----------------------------------------------------------------------


def offered_to_three() -> Trip:
    trip = dispatching()
    for n in (1, 2, 3):
        trip = offer(
            trip, offer_id=f"o{n}", driver_id=f"d{n}", now=T0 + timedelta(seconds=2), parallel=3
        )
    return trip


def test_parallel_offers_go_to_different_drivers_each_in_a_slot_of_its_own() -> None:
    trip = offered_to_three()
    assert [(o.offer_id, o.driver_id, o.attempt, o.slot) for o in trip.offers] == [
        ("o1", "d1", 1, 0),
        ("o2", "d2", 2, 1),
        ("o3", "d3", 3, 2),
    ]
    assert trip.offer == trip.offers[0]
    with pytest.raises(OfferMismatchError):
        offer(trip, offer_id="o4", driver_id="d4", now=T0 + timedelta(seconds=2), parallel=3)


def test_a_driver_is_offered_a_trip_once_at_a_time() -> None:
    with pytest.raises(InvalidArgumentError, match="has trip"):
        offer(offered(), offer_id="o2", driver_id="d1", now=T0 + timedelta(seconds=3), parallel=2)


def test_a_freed_slot_is_taken_by_the_next_offer() -> None:
    trip = decline(offered_to_three(), driver_id="d2", offer_id="o2", now=T0 + timedelta(seconds=3))
    trip = offer(trip, offer_id="o4", driver_id="d4", now=T0 + timedelta(seconds=4), parallel=3)
    assert [(o.offer_id, o.slot) for o in trip.offers] == [("o1", 0), ("o3", 2), ("o4", 1)]


def test_a_decline_leaves_the_other_parallel_offers_standing() -> None:
    trip = decline(offered_to_three(), driver_id="d2", offer_id="o2", now=T0 + timedelta(seconds=3))
    assert trip.state is TripState.DISPATCHING
    assert [o.offer_id for o in trip.offers] == ["o1", "o3"]
    assert trip.excluded_driver_ids == {"d2"}


def test_the_first_accept_of_parallel_offers_wins_and_ends_the_others() -> None:
    trip = accept(offered_to_three(), driver_id="d3", offer_id="o3", now=ACCEPTED_AT)
    assert (trip.state, trip.driver_id, trip.offers) == (TripState.ACCEPTED, "d3", ())
    with pytest.raises(InvalidTransition, match="cannot accept when state=ACCEPTED"):
        accept(trip, driver_id="d1", offer_id="o1", now=ACCEPTED_AT)


def test_one_of_parallel_offers_expires_alone() -> None:
    trip = expire_offer(offered_to_three(), offer_id="o1", now=T0 + timedelta(seconds=17))
    assert [o.offer_id for o in trip.offers] == ["o2", "o3"]
    assert trip.excluded_driver_ids == {"d1"}


def test_every_offered_driver_may_see_the_trip_and_only_they() -> None:
    trip = offered_to_three()
    assert all(may_see(trip, Viewer(Actor.DRIVER, f"d{n}")) for n in (1, 2, 3))
    assert not may_see(trip, Viewer(Actor.DRIVER, "d4"))


def test_dispatch_fills_a_batch_passing_over_drivers_offered_already() -> None:
    plan = DispatchPlan(parallel_offers=3)
    now = T0 + timedelta(seconds=2)
    trip = offer(dispatching(), offer_id="o1", driver_id="d1", now=now, parallel=3)
    step = next_dispatch_step(trip, ["d1", "d2"], radius_index=0, now=now, plan=plan)
    assert step == OfferTo("d2", 0)
    with pytest.raises(OfferMismatchError):
        next_dispatch_step(offered_to_three(), ["d4"], radius_index=0, now=now, plan=plan)


def test_parallel_offers_count_against_max_offers() -> None:
    plan = DispatchPlan(parallel_offers=3, max_offers=2)
    trip = dispatching()
    now = T0 + timedelta(seconds=2)
    for n in (1, 2):
        trip = offer(trip, offer_id=f"o{n}", driver_id=f"d{n}", now=now, parallel=3)
    step = next_dispatch_step(trip, ["d3"], radius_index=0, now=now, plan=plan)
    assert isinstance(step, GiveUp)


def test_exhausted_dispatch_ends_in_no_drivers() -> None:
    trip = exhaust(offered(), now=T0 + timedelta(minutes=3), reason="no drivers within 10 km")
    assert trip.state is TripState.NO_DRIVERS
    assert trip.offer is None
    assert trip.ended_at == T0 + timedelta(minutes=3)
    assert not trip.is_live


# --- the ride ------------------------------------------------------------------------------


GuardByDriver = Callable[..., Trip]


@pytest.mark.parametrize(
    ("build", "guard"),
    [(accepted, arrive), (arrived, start), (in_progress, complete)],
    ids=["arrive", "start", "complete"],
)
def test_only_the_assigned_driver_may_arrive_start_or_complete(
    build: Callable[[], Trip], guard: GuardByDriver
) -> None:
    with pytest.raises(PermissionDeniedError):
        guard(build(), driver_id="d2", now=T0 + timedelta(minutes=30))


@pytest.mark.parametrize("guard", [arrive, start, complete], ids=["arrive", "start", "complete"])
def test_no_driver_may_act_on_a_trip_still_dispatching(guard: GuardByDriver) -> None:
    with pytest.raises(InvalidTransition, match="when state=DISPATCHING"):
        guard(offered(), driver_id="d1", now=T0 + timedelta(minutes=1))


def test_a_ride_measured_as_quoted_is_charged_the_measured_price() -> None:
    distance_m, duration_s = estimate()
    trip = completed()
    assert trip.state is TripState.COMPLETED
    assert trip.final_fare == trip.quoted_fare  # the same route and time as the estimate
    assert (trip.distance_m, trip.duration_s) == (distance_m, duration_s)
    assert trip.fare_basis is FareBasis.METERED
    assert trip.settlement is not None and trip.settlement.rule is FareRule.WITHIN_BAND
    assert trip.flagged_at is None
    assert trip.completed_at == T0 + timedelta(minutes=6, seconds=duration_s)
    assert trip.ended_at == trip.completed_at


def test_the_duration_priced_is_the_service_clock_from_start_to_end() -> None:
    distance_m, _ = estimate()
    trip = completed(TrackMeasurement(distance_m, points=100), after_s=660)
    assert trip.duration_s == 660
    assert trip.settlement is not None and trip.settlement.measured_duration_s == 660
    assert trip.final_fare == quote_price(
        distance_m, 660, TARIFFS[VehicleClass.STANDARD], trip.surge_multiplier
    )


def test_completed_trip_keeps_the_quoted_surge() -> None:
    distance_m, duration_s = estimate()
    trip = requested(surge=2.0)
    trip = dispatch(trip, now=T0)
    trip = offer(trip, offer_id="o1", driver_id="d1", now=T0)
    trip = accept(trip, driver_id="d1", offer_id="o1", now=T0)
    trip = arrive(trip, driver_id="d1", now=T0)
    trip = start(trip, driver_id="d1", now=T0)
    trip = complete(
        trip,
        driver_id="d1",
        now=T0 + timedelta(seconds=duration_s),
        track=TrackMeasurement(distance_m, points=10),
    )
    assert trip.final_fare == quote_price(
        distance_m, duration_s, TARIFFS[VehicleClass.STANDARD], 2.0
    )


def test_an_unmeasured_ride_pays_the_quote_whatever_the_driver_reports() -> None:
    ride = in_progress()
    trip = complete(
        ride,
        driver_id="d1",
        now=T0 + timedelta(minutes=18),
        reported_distance_m=10_000_000,
        reported_duration_s=604_800,
    )
    assert trip.final_fare == ride.quoted_fare
    assert trip.fare_basis is FareBasis.QUOTE
    assert trip.distance_m == ride.estimated_distance_m
    assert trip.duration_s == 12 * 60
    settlement = trip.settlement
    assert settlement is not None and settlement.rule is FareRule.NO_MEASUREMENT
    assert (settlement.reported_distance_m, settlement.reported_duration_s) == (
        10_000_000,
        604_800,
    )


def test_a_ride_measured_far_longer_than_quoted_pays_the_quote_and_is_flagged() -> None:
    trip = completed(TrackMeasurement(100_000, points=900))
    assert trip.final_fare == trip.quoted_fare
    assert trip.fare_basis is FareBasis.QUOTE
    assert trip.settlement is not None and trip.settlement.rule is FareRule.ABOVE_BAND
    assert trip.flagged_at == trip.completed_at
    assert trip.flag_reason.startswith("fare review: ")
    assert trip.distance_m == 100_000  # what was measured, beside what was charged


def test_a_ride_measured_far_shorter_than_quoted_pays_the_band_floor_and_is_flagged() -> None:
    trip = completed(TrackMeasurement(50, points=3), after_s=30)
    assert trip.settlement is not None and trip.settlement.rule is FareRule.BELOW_BAND
    assert trip.final_fare == trip.settlement.band_low
    assert trip.final_fare.amount_minor < trip.quoted_fare.amount_minor
    assert trip.flagged_at == trip.completed_at


def test_every_transition_adds_one_version_and_one_history_record() -> None:
    trip = completed()
    assert trip.version == 7
    assert [h.command for h in trip.history] == [
        "request",
        "dispatch",
        "offer",
        "accept",
        "arrive",
        "start",
        "complete",
    ]
    assert [h.version for h in trip.history] == list(range(1, 8))
    for before, after in pairwise(trip.history):
        assert after.from_state is before.to_state


def test_a_rejected_command_leaves_the_trip_unchanged() -> None:
    trip = accepted()
    snapshot = replace(trip)
    with pytest.raises(TripError):
        start(trip, driver_id="d1", now=T0 + timedelta(minutes=1))
    assert trip == snapshot


# --- rider, system and admin cancellation --------------------------------------------------


@pytest.mark.parametrize("build", [requested, dispatching, offered], ids=lambda f: f.__name__)
def test_rider_cancels_before_a_driver_accepted_for_free(build: Callable[[], Trip]) -> None:
    trip, fee = cancel(build(), actor=Actor.RIDER, actor_id="r1", now=T0 + timedelta(hours=1))
    assert trip.state is TripState.CANCELLED
    assert fee is None
    assert trip.cancellation_fee is None
    assert trip.offer is None
    assert trip.ended_at == trip.cancelled_at == T0 + timedelta(hours=1)


def test_rider_cancels_within_the_grace_period_after_accept_for_free() -> None:
    _, fee = cancel(
        accepted(), actor=Actor.RIDER, actor_id="r1", now=ACCEPTED_AT + timedelta(minutes=2)
    )
    assert fee is None


def test_rider_cancels_after_driver_accepted_pays_fee() -> None:
    trip, fee = cancel(
        accepted(),
        actor=Actor.RIDER,
        actor_id="r1",
        now=ACCEPTED_AT + timedelta(minutes=2, seconds=1),
        reason="changed my mind",
    )
    assert fee == FEE
    assert trip.cancellation_fee == FEE
    assert (trip.cancelled_by, trip.cancel_reason) == (Actor.RIDER, "changed my mind")


def test_rider_cancels_while_the_driver_waits_at_pickup_pays_fee() -> None:
    _, fee = cancel(
        arrived(), actor=Actor.RIDER, actor_id="r1", now=ACCEPTED_AT + timedelta(minutes=6)
    )
    assert fee == FEE


def test_grace_period_comes_from_the_policy() -> None:
    _, fee = cancel(
        accepted(),
        actor=Actor.RIDER,
        actor_id="r1",
        now=ACCEPTED_AT + timedelta(seconds=31),
        policy=CancellationPolicy(grace=timedelta(seconds=30)),
    )
    assert fee == FEE


def test_rider_cannot_cancel_once_the_ride_started() -> None:
    with pytest.raises(InvalidTransition, match="cannot cancel when state=IN_PROGRESS"):
        cancel(in_progress(), actor=Actor.RIDER, actor_id="r1", now=T0 + timedelta(minutes=7))


def test_another_rider_cannot_cancel_the_trip() -> None:
    with pytest.raises(PermissionDeniedError):
        cancel(accepted(), actor=Actor.RIDER, actor_id="r2", now=T0 + timedelta(minutes=1))


def test_system_cancels_without_a_fee_and_without_an_actor_id() -> None:
    trip, fee = cancel(
        arrived(),
        actor=Actor.SYSTEM,
        actor_id="ignored",
        now=T0 + timedelta(hours=1),
        reason="pickup timeout",
    )
    assert (trip.state, fee) == (TripState.CANCELLED, None)
    assert trip.history[-1].actor_id == ""


def test_system_cannot_cancel_a_ride_in_progress() -> None:
    with pytest.raises(InvalidTransition):
        cancel(in_progress(), actor=Actor.SYSTEM, actor_id="", now=T0 + timedelta(minutes=7))


def test_admin_can_cancel_a_ride_in_progress() -> None:
    trip, fee = cancel(
        in_progress(), actor=Actor.ADMIN, actor_id="ops-1", now=T0 + timedelta(minutes=7)
    )
    assert (trip.state, trip.cancelled_by, fee) == (TripState.CANCELLED, Actor.ADMIN, None)
    assert trip.history[-1].actor_id == "ops-1"


def test_admin_cancellation_needs_the_admins_id() -> None:
    with pytest.raises(InvalidArgumentError):
        cancel(accepted(), actor=Actor.ADMIN, actor_id="", now=T0 + timedelta(minutes=1))


def test_a_driver_cannot_cancel_outright_and_is_told_who_can() -> None:
    with pytest.raises(InvalidTransition, match=r"allowed for RIDER, SYSTEM, ADMIN"):
        cancel(accepted(), actor=Actor.DRIVER, actor_id="d1", now=T0 + timedelta(minutes=1))


@pytest.mark.parametrize("build", [completed, in_progress], ids=lambda f: f.__name__)
def test_an_ended_or_started_trip_cannot_be_cancelled_by_its_rider(
    build: Callable[[], Trip],
) -> None:
    with pytest.raises(InvalidTransition):
        cancel(build(), actor=Actor.RIDER, actor_id="r1", now=T0 + timedelta(hours=1))


# --- driver cancellation -------------------------------------------------------------------


@pytest.mark.parametrize("build", [accepted, arrived], ids=lambda f: f.__name__)
def test_driver_cancel_returns_the_trip_to_dispatch_without_that_driver(
    build: Callable[[], Trip],
) -> None:
    now = T0 + timedelta(minutes=5, seconds=30)
    trip = driver_cancel(build(), driver_id="d1", now=now, reason="flat tyre")
    assert trip.state is TripState.DISPATCHING
    assert trip.driver_id is None
    assert trip.excluded_driver_ids == {"d1"}
    assert (trip.accepted_at, trip.arrived_at) == (None, None)
    assert (trip.offer_attempts, trip.dispatch_started_at) == (0, now)
    assert trip.history[-1].reason == "flat tyre"


def test_after_a_driver_cancel_the_rider_cancels_for_free() -> None:
    trip = driver_cancel(accepted(), driver_id="d1", now=T0 + timedelta(minutes=4))
    _, fee = cancel(trip, actor=Actor.RIDER, actor_id="r1", now=T0 + timedelta(minutes=9))
    assert fee is None


def test_only_the_assigned_driver_may_drop_the_trip() -> None:
    with pytest.raises(PermissionDeniedError):
        driver_cancel(accepted(), driver_id="d2", now=T0 + timedelta(minutes=1))


def test_driver_cannot_drop_a_ride_in_progress() -> None:
    with pytest.raises(InvalidTransition, match="cannot driver_cancel when state=IN_PROGRESS"):
        driver_cancel(in_progress(), driver_id="d1", now=T0 + timedelta(minutes=7))


def test_system_releases_an_assigned_driver_who_went_offline() -> None:
    trip = driver_cancel(
        accepted(),
        driver_id="d1",
        now=T0 + timedelta(minutes=1),
        reason="driver offline",
        actor=Actor.SYSTEM,
    )
    assert trip.state is TripState.DISPATCHING
    assert (trip.history[-1].actor, trip.history[-1].actor_id) == (Actor.SYSTEM, "")


def test_rider_cannot_use_driver_cancel() -> None:
    with pytest.raises(InvalidTransition):
        driver_cancel(accepted(), driver_id="d1", now=T0, actor=Actor.RIDER)


# --- ratings -------------------------------------------------------------------------------


def test_each_side_rates_a_completed_trip_once() -> None:
    trip = rate(completed(), side=Actor.RIDER, actor_id="r1", stars=5)
    trip = rate(trip, side=Actor.DRIVER, actor_id="d1", stars=4)
    assert (trip.rider_rating, trip.driver_rating) == (5, 4)
    assert trip.version == completed().version + 2
    with pytest.raises(AlreadyRatedError):
        rate(trip, side=Actor.RIDER, actor_id="r1", stars=1)
    with pytest.raises(AlreadyRatedError):
        rate(trip, side=Actor.DRIVER, actor_id="d1", stars=1)


def test_a_rating_adds_no_history_record() -> None:
    trip = completed()
    assert rate(trip, side=Actor.RIDER, actor_id="r1", stars=3).history == trip.history


@pytest.mark.parametrize("build", [accepted, in_progress], ids=lambda f: f.__name__)
def test_a_trip_is_rated_only_after_it_completed(build: Callable[[], Trip]) -> None:
    with pytest.raises(InvalidTransition, match="cannot rate when state="):
        rate(build(), side=Actor.RIDER, actor_id="r1", stars=5)


@pytest.mark.parametrize("stars", [0, 6, -1, True])
def test_stars_are_a_whole_number_from_one_to_five(stars: int) -> None:
    with pytest.raises(InvalidArgumentError):
        rate(completed(), side=Actor.RIDER, actor_id="r1", stars=stars)


@pytest.mark.parametrize("side", [Actor.SYSTEM, Actor.ADMIN])
def test_only_rider_or_driver_rates(side: Actor) -> None:
    with pytest.raises(InvalidArgumentError):
        rate(completed(), side=side, actor_id="x", stars=5)


@pytest.mark.parametrize(("side", "actor_id"), [(Actor.RIDER, "r2"), (Actor.DRIVER, "d2")])
def test_only_the_trips_own_rider_or_driver_rates(side: Actor, actor_id: str) -> None:
    with pytest.raises(PermissionDeniedError):
        rate(completed(), side=side, actor_id=actor_id, stars=5)


# --- the dispatch plan ---------------------------------------------------------------------


def test_default_plan_searches_2_5_then_10_km_with_15_second_offers() -> None:
    assert DEFAULT_DISPATCH_PLAN.radius_steps_m == (2000, 5000, 10000)
    assert DEFAULT_DISPATCH_PLAN.offer_timeout == timedelta(seconds=15)


def test_dispatch_offers_to_the_nearest_driver_not_excluded_or_skipped() -> None:
    trip = decline(offered(), driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=3))
    step = next_dispatch_step(
        trip, ["d1", "d2", "d3"], radius_index=0, now=T0 + timedelta(seconds=4), skip={"d2"}
    )
    assert step == OfferTo("d3", 0)


def test_dispatch_widens_the_radius_when_nobody_nearby_is_left() -> None:
    trip = decline(offered(), driver_id="d1", offer_id="o1", now=T0 + timedelta(seconds=3))
    now = T0 + timedelta(seconds=4)
    assert next_dispatch_step(trip, ["d1"], radius_index=0, now=now) == Widen(1, 5000)
    assert next_dispatch_step(trip, [], radius_index=1, now=now) == Widen(2, 10000)


def test_dispatch_gives_up_after_the_widest_radius() -> None:
    step = next_dispatch_step(dispatching(), [], radius_index=2, now=T0 + timedelta(seconds=2))
    assert step == GiveUp("no drivers within 10 km")


def test_dispatch_gives_up_after_the_last_allowed_offer() -> None:
    plan = DispatchPlan(max_offers=1)
    trip = expire_offer(offered(), offer_id="o1", now=T0 + timedelta(seconds=17))
    step = next_dispatch_step(
        trip, ["d2"], radius_index=0, now=T0 + timedelta(seconds=18), plan=plan
    )
    assert isinstance(step, GiveUp)
    assert "1 offers" in step.reason


def test_dispatch_gives_up_after_the_longest_wait() -> None:
    step = next_dispatch_step(
        dispatching(), ["d2"], radius_index=0, now=T0 + timedelta(seconds=1, minutes=3)
    )
    assert step == GiveUp("no driver accepted within 180 s")


def test_dispatch_after_a_driver_cancel_waits_from_the_cancel() -> None:
    trip = driver_cancel(accepted(), driver_id="d1", now=T0 + timedelta(minutes=10))
    step = next_dispatch_step(trip, ["d1", "d2"], radius_index=0, now=T0 + timedelta(minutes=11))
    assert step == OfferTo("d2", 0)


def test_dispatch_step_is_not_asked_while_an_offer_is_pending_or_after_dispatch() -> None:
    with pytest.raises(OfferMismatchError):
        next_dispatch_step(offered(), ["d2"], radius_index=0, now=T0)
    with pytest.raises(InvalidTransition):
        next_dispatch_step(accepted(), ["d2"], radius_index=0, now=T0)
    with pytest.raises(InvalidArgumentError):
        next_dispatch_step(dispatching(), ["d2"], radius_index=3, now=T0)


@pytest.mark.parametrize(
    "changes",
    [
        {"radius_steps_m": ()},
        {"radius_steps_m": (5000, 2000)},
        {"radius_steps_m": (0, 2000)},
        {"offer_timeout": timedelta(0)},
        {"max_wait": timedelta(seconds=-1)},
        {"max_offers": 0},
        {"candidates_per_search": 0},
    ],
)
def test_a_dispatch_plan_that_cannot_work_is_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        DispatchPlan(**changes)  # type: ignore[arg-type]


def test_every_domain_error_is_a_trip_error() -> None:
    for error in (
        AlreadyRatedError,
        ConcurrencyError,
        InvalidArgumentError,
        InvalidTransition,
        NotFoundError,
        OfferExpiredError,
        OfferMismatchError,
        PermissionDeniedError,
        QuoteExpiredError,
        QuoteUsedError,
        RiderHasLiveTripError,
    ):
        assert issubclass(error, TripError)


def test_booking_a_booked_quote_again_by_its_rider_repeats_the_first_booking() -> None:
    used = replace(a_quote(), trip_id="t0")
    assert repeated_booking(used, rider_id="r1", pickup=PICKUP, dropoff=DROPOFF) == "t0"


def test_a_quote_not_booked_yet_or_booked_by_someone_else_repeats_nothing() -> None:
    assert repeated_booking(a_quote(), rider_id="r1", pickup=PICKUP, dropoff=DROPOFF) is None
    used = replace(a_quote(), trip_id="t0")
    assert repeated_booking(used, rider_id="r2", pickup=PICKUP, dropoff=DROPOFF) is None
    assert repeated_booking(used, rider_id="r1", pickup=DROPOFF, dropoff=PICKUP) is None


# --- who may see a trip --------------------------------------------------------------------


def driver_cancelled() -> Trip:
    return driver_cancel(accepted(), driver_id="d1", now=T0 + timedelta(minutes=1))


def declined() -> Trip:
    return decline(offered(), driver_id="d1", offer_id="o1", now=ACCEPTED_AT)


# (trip, viewer) pairs a user may see: its rider, its assigned or offered driver, and anyone
# acting as the service; and pairs they may not.
VISIBLE = [
    (requested, Viewer(Actor.RIDER, "r1")),
    (offered, Viewer(Actor.DRIVER, "d1")),
    (accepted, Viewer(Actor.DRIVER, "d1")),
    (completed, Viewer(Actor.DRIVER, "d1")),
    (completed, Viewer(Actor.RIDER, "r1")),
    (requested, Viewer(Actor.ADMIN, "admin-1")),
    (requested, Viewer(Actor.SYSTEM)),
]
HIDDEN = [
    (requested, Viewer(Actor.RIDER, "r2")),
    (requested, Viewer(Actor.RIDER, "")),
    (requested, Viewer(Actor.DRIVER, "r1")),  # the rider's id, claimed as a driver
    (offered, Viewer(Actor.DRIVER, "d2")),
    (offered, Viewer(Actor.RIDER, "d1")),  # the offered driver's id, claimed as a rider
    (accepted, Viewer(Actor.DRIVER, "d2")),
    (dispatching, Viewer(Actor.DRIVER, "")),
    (driver_cancelled, Viewer(Actor.DRIVER, "d1")),  # taken off the trip
    (
        lambda: decline(offered(), driver_id="d1", offer_id="o1", now=ACCEPTED_AT),
        Viewer(Actor.DRIVER, "d1"),
    ),
]


@pytest.mark.parametrize(("trip", "viewer"), VISIBLE)
def test_the_trips_parties_and_the_service_may_see_it(
    trip: Callable[[], Trip], viewer: Viewer
) -> None:
    assert may_see(trip(), viewer)
    check_visible(trip(), viewer)


@pytest.mark.parametrize(("trip", "viewer"), HIDDEN)
def test_a_trip_hidden_from_a_caller_is_not_found_in_the_words_of_a_missing_one(
    trip: Callable[[], Trip], viewer: Viewer
) -> None:
    assert not may_see(trip(), viewer)
    with pytest.raises(NotFoundError) as hidden:
        check_visible(trip(), viewer)
    assert str(hidden.value) == str(trip_not_found()) == "trip not found"


@given(
    trip=st.sampled_from([requested, offered, accepted, completed, driver_cancelled, declined]),
    actor=st.sampled_from([Actor.RIDER, Actor.DRIVER]),
    actor_id=st.sampled_from(["r1", "d1", "d2", ""]) | st.text(max_size=8),
)
def test_a_user_sees_a_trip_exactly_when_they_are_one_of_its_parties(
    trip: Callable[[], Trip], actor: Actor, actor_id: str
) -> None:
    t = trip()
    offered_to = t.offer.driver_id if t.offer is not None else None
    parties = {t.rider_id} if actor is Actor.RIDER else {t.driver_id, offered_to}
    assert may_see(t, Viewer(actor, actor_id)) == (actor_id in parties - {None, ""})
