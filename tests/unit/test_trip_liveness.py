"""Every live state's clock (``trip/liveness.py``) and the guards it drives, with a fixed clock.

Timeline of the trips built here (from ``test_trip_domain``): requested at T0, dispatching at
T0+1 s, accepted at T0+5 s, arrived at T0+5 min, started at T0+6 min. The policy is the
default one: silent 60 s, pickup 20 min, boarding 10 min, ride flag 2 min / end 15 min,
dispatch 5 min, life 8 h.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.unit.test_trip_domain import (
    ACCEPTED_AT,
    T0,
    accepted,
    arrived,
    completed,
    dispatching,
    in_progress,
    offered,
    requested,
)
from trip.domain import (
    Actor,
    FareBasis,
    InvalidArgumentError,
    InvalidTransition,
    PermissionDeniedError,
    Trip,
    TripState,
    end_ride,
    flag,
    reassign,
)
from trip.liveness import (
    Cancel,
    EndRide,
    Exhaust,
    Flag,
    Heard,
    LivenessPolicy,
    LivenessRule,
    Reassign,
    cutoffs,
    decide,
    last_heard,
)

POLICY = LivenessPolicy()
ARRIVED_AT = T0 + timedelta(minutes=5)
STARTED_AT = T0 + timedelta(minutes=6)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def heard(at: datetime, driver_id: str = "d1") -> Heard:
    return Heard(driver_id, at)


def decide_at(trip: Trip, now: datetime, position_at: datetime | None) -> object:
    return decide(
        trip,
        now=now,
        policy=POLICY,
        heard=heard(position_at) if position_at is not None else None,
    )


# --- before pickup -------------------------------------------------------------------------


def test_a_driver_silent_for_the_limit_after_accepting_is_replaced() -> None:
    last = ACCEPTED_AT + s(10)

    assert decide_at(accepted(), last + s(59.9), last) is None
    assert decide_at(accepted(), last + s(60), last) == Reassign(
        "d1", LivenessRule.DRIVER_SILENT, "driver silent for 60 s (limit 60 s)"
    )


def test_accepting_is_a_sign_of_life_even_when_the_last_position_is_older() -> None:
    assert decide_at(accepted(), ACCEPTED_AT + s(59), T0 - s(600)) is None
    action = decide_at(accepted(), ACCEPTED_AT + s(60), T0 - s(600))
    assert isinstance(action, Reassign) and action.rule is LivenessRule.DRIVER_SILENT


def test_a_driver_location_cannot_say_anything_about_is_never_called_silent() -> None:
    later = ACCEPTED_AT + timedelta(minutes=10)

    assert decide_at(accepted(), later, None) is None
    assert decide(accepted(), now=later, policy=POLICY, heard=heard(T0, "d2")) is None


def test_a_driver_who_keeps_reporting_is_replaced_only_past_the_pickup_limit() -> None:
    limit = ACCEPTED_AT + POLICY.pickup_limit

    assert decide_at(accepted(), limit - s(1), limit - s(2)) is None
    assert decide_at(accepted(), limit, limit - s(1)) == Reassign(
        "d1", LivenessRule.PICKUP_TOO_LONG, "driver did not reach the pickup within 1200 s"
    )


def test_a_driver_silent_at_the_pickup_is_replaced() -> None:
    action = decide_at(arrived(), ARRIVED_AT + s(60), ARRIVED_AT - s(30))

    assert isinstance(action, Reassign)
    assert (action.driver_id, action.rule) == ("d1", LivenessRule.DRIVER_SILENT)


def test_a_ride_that_does_not_start_within_the_boarding_wait_is_cancelled() -> None:
    limit = ARRIVED_AT + POLICY.boarding_wait

    assert decide_at(arrived(), limit - s(1), limit - s(2)) is None
    assert decide_at(arrived(), limit, limit - s(1)) == Cancel(
        LivenessRule.BOARDING_TOO_LONG,
        "ride did not start within 600 s of the driver's arrival",
    )


# --- the ride ------------------------------------------------------------------------------


def test_a_ride_whose_driver_is_silent_is_flagged_then_ended() -> None:
    last = STARTED_AT + s(30)

    assert decide_at(in_progress(), last + s(119), last) is None
    flagged = decide_at(in_progress(), last + s(120), last)
    assert flagged == Flag(
        LivenessRule.RIDE_SILENT, "driver silent for 120 s during the ride", last
    )
    ended = decide_at(in_progress(), last + s(900), last)
    assert isinstance(ended, EndRide)
    assert (ended.rule, ended.last_heard) == (LivenessRule.RIDE_SILENT, last)
    assert ended.reason.startswith("driver silent for 900 s during the ride")


def test_a_ride_is_flagged_once_per_silence() -> None:
    last = STARTED_AT + s(30)
    once = flag(in_progress(), now=last + s(120), reason="silent")

    assert decide_at(once, last + s(300), last) is None
    # Heard again after the flag, then silent again: a new silence, a new flag.
    again = last + s(400)
    assert isinstance(decide_at(once, again + s(120), again), Flag)


def test_a_ride_is_never_ended_for_want_of_an_answer_from_location() -> None:
    assert decide_at(in_progress(), STARTED_AT + timedelta(hours=2), None) is None


# --- dispatch and the life cap -------------------------------------------------------------


def test_a_requested_trip_whose_dispatch_never_began_is_cancelled_after_the_limit() -> None:
    assert decide_at(requested(), T0 + s(299), None) is None
    action = decide_at(requested(), T0 + s(300), None)
    assert isinstance(action, Cancel) and action.rule is LivenessRule.DISPATCH_STALLED


@pytest.mark.parametrize("build", [dispatching, offered], ids=["no offer", "offer pending"])
def test_a_dispatch_that_did_not_finish_ends_no_drivers(build: object) -> None:
    trip = build()  # type: ignore[operator]
    started = T0 + s(1)

    assert decide_at(trip, started + s(299), None) is None
    action = decide_at(trip, started + s(300), None)
    assert isinstance(action, Exhaust) and action.rule is LivenessRule.DISPATCH_STALLED
    assert "dispatch did not finish" in action.reason


def test_a_reassigned_trip_gets_a_fresh_dispatch_clock() -> None:
    moved_on = ACCEPTED_AT + s(70)
    back = reassign(accepted(), driver_id="d1", now=moved_on, reason="silent")

    assert decide_at(back, moved_on + s(299), None) is None
    assert isinstance(decide_at(back, moved_on + s(300), None), Exhaust)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (requested, Cancel),
        (dispatching, Cancel),
        (accepted, Cancel),
        (arrived, Cancel),
        (in_progress, EndRide),
    ],
)
def test_no_trip_lives_past_the_life_cap(build: object, expected: type) -> None:
    trip = build()  # type: ignore[operator]
    now = T0 + POLICY.max_life

    action = decide_at(trip, now, now - s(1))

    assert isinstance(action, expected)
    assert action.rule is LivenessRule.TRIP_TOO_OLD  # type: ignore[attr-defined]


def test_an_ended_trip_has_no_clock() -> None:
    assert decide_at(completed(), T0 + timedelta(days=2), T0) is None


@pytest.mark.parametrize(
    ("build", "since", "field"),
    [
        (dispatching, T0 + s(1), "dispatch_started"),
        (accepted, ACCEPTED_AT, "accepted"),
        (arrived, ARRIVED_AT, "arrived"),
        (in_progress, STARTED_AT, "started"),
    ],
)
def test_no_rule_applies_before_a_trip_passes_its_states_cutoff(
    build: object, since: datetime, field: str
) -> None:
    trip = build()  # type: ignore[operator]
    # The instant the state's clock reaches its cutoff, and just before.
    now = since + (since - getattr(cutoffs(since, POLICY), field))

    assert getattr(cutoffs(now, POLICY), field) == since
    assert decide_at(trip, now - s(0.001), T0 - timedelta(hours=1)) is None
    assert decide_at(trip, now, T0 - timedelta(hours=1)) is not None


def test_last_heard_is_the_latest_position_or_command_of_the_trips_driver() -> None:
    assert last_heard(arrived(), heard(T0)) == ARRIVED_AT
    assert last_heard(arrived(), heard(ARRIVED_AT + s(5))) == ARRIVED_AT + s(5)
    assert last_heard(arrived(), heard(ARRIVED_AT + s(5), "d2")) is None
    assert last_heard(arrived(), None) is None


def test_a_policy_that_could_end_a_ride_before_flagging_it_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="ride_silent_flag"):
        LivenessPolicy(ride_silent_flag=s(60), ride_silent_end=s(60))
    with pytest.raises(InvalidArgumentError, match="driver_silent"):
        LivenessPolicy(driver_silent=s(0))


# --- the guards the sweeper uses -----------------------------------------------------------


def test_reassign_releases_and_excludes_the_driver_and_restarts_dispatch() -> None:
    at = ARRIVED_AT + s(90)

    back = reassign(arrived(), driver_id="d1", now=at, reason="driver silent for 90 s")

    assert back.state is TripState.DISPATCHING
    assert back.driver_id is None and "d1" in back.excluded_driver_ids
    assert (back.dispatch_started_at, back.offer_attempts) == (at, 0)
    assert back.accepted_at is None and back.arrived_at is None
    record = back.history[-1]
    assert (record.command, record.actor, record.actor_id) == ("reassign", Actor.SYSTEM, "")
    assert record.reason == "driver silent for 90 s"


def test_reassign_refuses_a_decision_about_another_driver() -> None:
    with pytest.raises(PermissionDeniedError):
        reassign(accepted(), driver_id="d2", now=ACCEPTED_AT + s(90), reason="silent")


def test_reassign_is_refused_once_the_ride_started() -> None:
    with pytest.raises(InvalidTransition, match="cannot reassign when state=IN_PROGRESS"):
        reassign(in_progress(), driver_id="d1", now=STARTED_AT + s(90), reason="silent")


def test_a_flag_keeps_the_ride_going_and_says_when_and_why() -> None:
    at = STARTED_AT + s(150)

    flagged = flag(in_progress(), now=at, reason="driver silent for 120 s during the ride")

    assert flagged.state is TripState.IN_PROGRESS
    assert (flagged.flagged_at, flagged.flag_reason) == (
        at,
        "driver silent for 120 s during the ride",
    )
    assert flagged.version == in_progress().version + 1
    assert (flagged.history[-1].command, flagged.history[-1].actor) == ("flag", Actor.SYSTEM)


def test_a_ride_the_system_ends_costs_the_quote_and_lasts_until_the_driver_was_last_heard() -> None:
    ride = in_progress()
    last = STARTED_AT + s(400)

    ended = end_ride(ride, now=last + s(900), reason="driver silent", last_heard=last)

    assert ended.state is TripState.COMPLETED
    assert ended.final_fare == ride.quoted_fare
    assert ended.fare_basis is FareBasis.QUOTE
    assert ended.duration_s == 400
    assert ended.distance_m == ride.estimated_distance_m
    assert ended.completed_at == ended.ended_at == last + s(900)
    assert (ended.history[-1].command, ended.history[-1].actor) == ("complete", Actor.SYSTEM)


def test_a_ride_the_driver_completes_is_metered() -> None:
    assert completed().fare_basis is FareBasis.METERED
