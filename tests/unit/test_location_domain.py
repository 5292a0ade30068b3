"""Position validation, staleness and search bounds: pure rules, no I/O."""

from __future__ import annotations

import math

import pytest

from location.domain import (
    MAX_BATCH,
    MAX_RADIUS_M,
    Availability,
    InvalidArgumentError,
    Position,
    Reject,
    SnapshotEntry,
    box_size_m,
    check_area,
    check_batch,
    check_hold,
    check_position,
    check_search,
    clamp_limit,
    is_stale,
    snapshot_entries,
    track_distance,
)

NOW = 1_700_000_000_000
GOOD = {
    "driver_id": "d1",
    "lat": 52.52,
    "lng": 13.40,
    "heading": 0.0,
    "speed_mps": 0.0,
    "accuracy_m": 0.0,
    "client_ts_ms": NOW,
}


def check(**changes: object) -> Reject | None:
    fields = {**GOOD, **changes}
    problem = check_position(**fields, now_ms=NOW, max_future_ms=30_000)  # type: ignore[arg-type]
    return None if problem is None else problem[0]


def test_a_well_formed_update_passes() -> None:
    assert check() is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"driver_id": ""}, Reject.MISSING_DRIVER_ID),
        ({"driver_id": "x" * 65}, Reject.MISSING_DRIVER_ID),
        ({"lat": 85.0512}, Reject.INVALID_COORDINATES),
        ({"lat": -90.0}, Reject.INVALID_COORDINATES),
        ({"lng": 180.5}, Reject.INVALID_COORDINATES),
        ({"lat": math.nan}, Reject.INVALID_COORDINATES),
        ({"lng": math.inf}, Reject.INVALID_COORDINATES),
        ({"heading": 360.0}, Reject.INVALID_HEADING),
        ({"heading": -0.1}, Reject.INVALID_HEADING),
        ({"heading": math.nan}, Reject.INVALID_HEADING),
        ({"speed_mps": -1.0}, Reject.INVALID_MOTION),
        ({"speed_mps": math.inf}, Reject.INVALID_MOTION),
        ({"accuracy_m": math.nan}, Reject.INVALID_MOTION),
        ({"client_ts_ms": 0}, Reject.INVALID_TIMESTAMP),
        ({"client_ts_ms": NOW + 30_001}, Reject.INVALID_TIMESTAMP),
    ],
)
def test_malformed_update_is_rejected_with_its_reason(
    changes: dict[str, object], reason: Reject
) -> None:
    assert check(**changes) == reason


@pytest.mark.parametrize(
    "changes",
    [
        {"lat": 85.05112878},
        {"lat": -85.05112878},
        {"lng": -180.0},
        {"heading": 359.99},
        {"client_ts_ms": NOW + 30_000},
    ],
)
def test_boundary_values_are_accepted(changes: dict[str, object]) -> None:
    assert check(**changes) is None


def test_detail_names_the_bad_value() -> None:
    problem = check_position(
        **{**GOOD, "lat": 91.0},  # type: ignore[arg-type]
        now_ms=NOW,
        max_future_ms=0,
    )
    assert problem is not None
    assert "91.0" in problem[1]


def test_driver_is_stale_only_after_the_bound() -> None:
    assert not is_stale(NOW - 30_000, now_ms=NOW, stale_ms=30_000)
    assert is_stale(NOW - 30_001, now_ms=NOW, stale_ms=30_000)


def test_limit_zero_means_default_and_large_is_capped() -> None:
    assert clamp_limit(0, default=10, maximum=50) == 10
    assert clamp_limit(500, default=10, maximum=50) == 50
    with pytest.raises(InvalidArgumentError):
        clamp_limit(-1, default=10, maximum=50)


def test_search_radius_is_capped_and_must_be_positive() -> None:
    assert check_search(0, 0, 1e9) == MAX_RADIUS_M
    for radius in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(InvalidArgumentError):
            check_search(0, 0, radius)


def test_a_batch_is_checked_item_by_item_and_a_bad_one_is_named_by_its_index() -> None:
    pairs = [("d1", "t1"), ("d2", "t1"), ("d1", "t2")]
    assert check_batch(pairs, lambda p: check_hold(*p), field="holds") == pairs
    assert check_batch([], lambda p: check_hold(*p), field="holds") == []
    with pytest.raises(InvalidArgumentError, match=r"^holds\[2\]: trip_id"):
        check_batch([*pairs[:2], ("d3", "")], lambda p: check_hold(*p), field="holds")


def test_a_batch_of_more_than_the_maximum_is_refused_whole() -> None:
    pairs = [("d1", "t1")] * MAX_BATCH
    assert len(check_batch(pairs, lambda p: check_hold(*p), field="holds")) == MAX_BATCH
    with pytest.raises(InvalidArgumentError, match=r"^holds: 1001 items, at most 1000"):
        check_batch([*pairs, ("", "")], lambda p: check_hold(*p), field="holds")


def test_area_must_be_an_ordered_box_on_the_globe() -> None:
    check_area(52.0, 13.0, 53.0, 14.0)
    with pytest.raises(InvalidArgumentError):
        check_area(53.0, 13.0, 52.0, 14.0)
    with pytest.raises(InvalidArgumentError):
        check_area(52.0, 13.0, 95.0, 14.0)
    with pytest.raises(InvalidArgumentError):
        check_search(89.0, 0.0, 1_000)  # beyond what a GEO index can hold


def test_box_size_shrinks_in_longitude_away_from_the_equator() -> None:
    width_equator, height = box_size_m(-0.5, 0.0, 0.5, 1.0)
    width_north, _ = box_size_m(59.5, 0.0, 60.5, 1.0)
    assert height == pytest.approx(111_320, rel=1e-3)
    assert width_north == pytest.approx(width_equator / 2, rel=1e-2)


def test_rebuild_makes_online_drivers_available_unless_a_live_trip_holds_them() -> None:
    online = [("free", 1), ("riding", 2), ("offered", 3)]
    held = [("riding", "t1", False), ("offered", "t2", True), ("gone-offline", "t3", True)]

    assert snapshot_entries(online, held) == [
        SnapshotEntry("free", 1, Availability.AVAILABLE),
        SnapshotEntry("riding", 2, Availability.ON_TRIP, "t1"),
        SnapshotEntry("offered", 3, Availability.OFFERED, "t2"),
    ]


@pytest.mark.parametrize("order", [1, -1], ids=["trip-first", "offer-first"])
def test_rebuild_prefers_the_live_trip_over_an_offer_listed_for_the_same_driver(
    order: int,
) -> None:
    held = [("d", "ride", False), ("d", "offer", True)][::order]

    assert snapshot_entries([("d", 1)], held) == [
        SnapshotEntry("d", 1, Availability.ON_TRIP, "ride")
    ]


# --- a trip's measured distance ----------------------------------------------------------

# One degree of latitude is ~111.2 km: 0.001 degrees north is ~111 m.
STEP_DEG = 0.001
STEP_M = 111.195


def fix(n: float, *, t_s: float, lat: float | None = None, accuracy: float = 5.0) -> Position:
    """The ``n``-th fix of a drive north from 52.5 N, taken (and received) ``t_s`` s in."""
    at = NOW + int(t_s * 1000)
    return Position(
        "", 52.5 + n * STEP_DEG if lat is None else lat, 13.4, 0.0, 10.0, accuracy, at, at
    )


def test_a_steady_drive_measures_the_sum_of_its_steps() -> None:
    fixes = [fix(i, t_s=10 * i) for i in range(11)]
    measured = track_distance(fixes, since_ms=NOW, until_ms=NOW + 100_000)
    assert measured.distance_m == pytest.approx(10 * STEP_M, rel=1e-3)
    assert (measured.points_used, measured.points_ignored) == (11, 0)
    assert (measured.first_ts_ms, measured.last_ts_ms) == (NOW, NOW + 100_000)


def test_only_fixes_received_within_the_window_count() -> None:
    fixes = [fix(i, t_s=10 * i) for i in range(11)]
    measured = track_distance(fixes, since_ms=NOW + 50_000, until_ms=NOW + 80_000)
    assert measured.distance_m == pytest.approx(3 * STEP_M, rel=1e-3)
    assert measured.points_used == 4


def test_a_teleport_is_ignored_and_the_drive_goes_on_from_the_last_kept_fix() -> None:
    fixes = [fix(0, t_s=0), fix(1, t_s=10), fix(0, t_s=11, lat=10.0), fix(2, t_s=20)]
    measured = track_distance(fixes, since_ms=NOW, until_ms=NOW + 20_000)
    assert measured.distance_m == pytest.approx(2 * STEP_M, rel=1e-3)
    assert (measured.points_used, measured.points_ignored) == (3, 1)


def test_inaccurate_fixes_are_ignored() -> None:
    fixes = [fix(0, t_s=0), fix(5, t_s=10, accuracy=500.0), fix(1, t_s=20)]
    measured = track_distance(fixes, since_ms=NOW, until_ms=NOW + 20_000)
    assert measured.distance_m == pytest.approx(STEP_M, rel=1e-3)
    assert measured.points_ignored == 1


def test_a_phone_clock_that_lies_cannot_stretch_the_track_past_top_speed() -> None:
    """Fixes a day apart by the phone's clock but received within 10 s: every step looks
    plausible to the phone's clock, the service's clock caps the total."""
    day_ms = 86_400_000
    fixes = [
        Position("", 52.5 + i * 0.1, 13.4, 0.0, 0.0, 5.0, NOW + i * day_ms, NOW + i * 1000)
        for i in range(11)
    ]
    measured = track_distance(fixes, since_ms=NOW, until_ms=NOW + 10_000, max_speed_mps=55.0)
    assert measured.distance_m == pytest.approx(55.0 * 10)


def test_no_fix_in_the_window_measures_nothing() -> None:
    measured = track_distance([fix(0, t_s=0)], since_ms=NOW + 1, until_ms=NOW + 2)
    assert (measured.distance_m, measured.points_used, measured.points_ignored) == (0.0, 0, 0)
