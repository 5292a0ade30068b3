"""The simulator's client-side invariant checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from rideshare.simulate.client import RETRY_CAP_S, backoff_s
from rideshare.simulate.invariants import (
    Assignment,
    ServerError,
    TripView,
    assignment_of,
    foreign_positions,
    is_violation,
    overlapping_assignments,
    server_errors,
    unfinished_trips,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_back_to_back_trips_of_one_driver_are_fine() -> None:
    held = [
        Assignment("d1", "t1", at(0), at(10)),
        Assignment("d1", "t2", at(10), at(20)),
        Assignment("d2", "t3", at(5), None),
        Assignment("d1", "t4", at(25), None),
    ]
    assert overlapping_assignments(held) == []


def test_a_driver_on_two_trips_at_once_is_a_violation() -> None:
    held = [
        Assignment("d1", "t1", at(0), at(10)),
        Assignment("d1", "t2", at(9), at(20)),
        Assignment("d2", "t3", at(0), None),
        Assignment("d2", "t4", at(30), at(31)),
    ]
    found = overlapping_assignments(held)
    assert [v.kind for v in found] == ["driver_on_two_trips"] * 2
    assert "t2" in found[0].detail and "t1" in found[0].detail
    assert "t4" in found[1].detail and "t3" in found[1].detail


def test_a_short_trip_inside_a_long_one_is_caught_even_after_it_ends() -> None:
    held = [
        Assignment("d1", "long", at(0), at(60)),
        Assignment("d1", "short", at(10), at(11)),
        Assignment("d1", "later", at(30), at(40)),
    ]
    assert len(overlapping_assignments(held)) == 2


def test_assignment_is_read_from_the_trip_json_with_the_end_of_any_kind() -> None:
    trip = {
        "id": "t1",
        "driver_id": "d1",
        "accepted_at": "2026-01-01T12:00:00Z",
        "ended_at": None,
        "completed_at": "2026-01-01T12:10:00+00:00",
    }
    a = assignment_of(trip)
    assert a == Assignment("d1", "t1", at(0), at(10))
    assert assignment_of({"id": "t2", "driver_id": None, "accepted_at": None}) is None
    live = assignment_of({"id": "t3", "driver_id": "d1", "accepted_at": "2026-01-01T12:00:00Z"})
    assert live is not None and live.end is None


def test_a_rider_may_see_only_drivers_of_its_own_trips() -> None:
    seen = {"r1": {"d1"}, "r2": {"d2", "d9"}}
    assigned = {"r1": {"d1", "d5"}, "r2": {"d2"}}
    found = foreign_positions(seen, assigned)
    assert len(found) == 1
    assert found[0].kind == "foreign_driver_position" and "d9" in found[0].detail
    assert foreign_positions({"r3": {"d1"}}, {})[0].detail.startswith("rider r3")


def test_a_trip_must_end_or_still_be_plausibly_live() -> None:
    trips = [
        TripView("done", "completed", age_s=500),
        TripView("gone", "no_drivers", age_s=500),
        TripView("waiting", "dispatching", age_s=30),
        TripView("forgotten", "dispatching", age_s=900),
        TripView("driving", "in_progress", age_s=900, driver_id="d1", driver_working_it=True),
        TripView("abandoned", "accepted", age_s=60, driver_id="d2", driver_working_it=False),
        TripView("weird", "teleported", age_s=1),
    ]
    found = unfinished_trips(trips, dispatch_wait_s=200)
    assert [v.kind for v in found] == ["trip_stuck"] * 3
    stuck = [v.detail.split()[1] for v in found]
    assert stuck == ["forgotten", "abandoned", "weird"]


@pytest.mark.parametrize(
    ("status", "retry_after", "violation"),
    [
        (200, False, False),
        (404, False, False),
        (409, False, False),
        (429, True, False),
        (500, False, True),
        (500, True, True),
        (501, False, True),
        (502, False, True),
        (502, True, True),
        (503, True, False),  # an outage or overload, with when to come back: retried
        (503, False, True),  # ... without it, the client is left guessing
        (504, False, False),  # slow, not wrong: retried
        (505, False, True),
    ],
)
def test_only_retryable_outage_answers_are_exempt_among_5xx(
    status: int, retry_after: bool, violation: bool
) -> None:
    assert is_violation(status, retry_after=retry_after) is violation


def test_retry_backoff_grows_exponentially_with_full_jitter_and_respects_retry_after() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(0.2 * 2**attempt, RETRY_CAP_S)
        waits = [backoff_s(attempt, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8 and min(waits) < ceiling * 0.2  # spread, not fixed
    assert all(backoff_s(1, rng, floor_s=2.0) >= 2.0 for _ in range(50))
    assert backoff_s(1, rng, floor_s=600.0) <= RETRY_CAP_S


def test_the_violating_5xx_answers_are_grouped_by_route() -> None:
    errors = [
        ServerError("POST", "/v1/trips", 503, "unavailable"),
        ServerError("POST", "/v1/trips", 503, "unavailable"),
        ServerError("GET", "/v1/trips/{id}", 500, "internal"),
    ]
    found = server_errors(errors)
    assert len(found) == 2
    assert found[0].detail == "POST /v1/trips -> 503 unavailable (x2)"
    assert server_errors([]) == []
