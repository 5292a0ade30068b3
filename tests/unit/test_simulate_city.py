"""The simulator's motion model and request schedule: pure, seeded, no clocks."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from rideshare.simulate.city import (
    BERLIN,
    BBox,
    Car,
    Clock,
    Point,
    arrival_times,
    bearing_deg,
    distance_m,
    move_toward,
    poisson_gaps,
    random_point,
    random_trip,
    report_interval_s,
    step,
)


def test_distance_and_bearing_agree_with_known_values() -> None:
    a = Point(52.52, 13.40)
    north = Point(52.53, 13.40)
    east = Point(52.52, 13.41)
    assert distance_m(a, north) == pytest.approx(1113.2, rel=1e-3)
    assert distance_m(a, east) == pytest.approx(677.8, rel=1e-2)
    assert bearing_deg(a, north) == pytest.approx(0.0, abs=1e-9)
    assert bearing_deg(a, east) == pytest.approx(90.0, abs=1e-6)
    assert bearing_deg(north, a) == pytest.approx(180.0, abs=1e-6)


def test_move_toward_covers_the_distance_and_stops_at_the_target() -> None:
    a, b = Point(52.50, 13.30), Point(52.55, 13.45)
    half = move_toward(a, b, distance_m(a, b) / 2)
    assert distance_m(a, half) == pytest.approx(distance_m(a, b) / 2, rel=1e-3)
    assert move_toward(a, b, 1e9) == b


def test_a_car_drives_smoothly_at_city_speeds_and_reaches_its_target() -> None:
    rng = random.Random(7)
    car = Car(Point(52.47, 13.31), heading=0.0, speed_mps=9.0)
    target = Point(52.56, 13.48)
    total, arrived, steps = 0.0, False, 0
    start_distance = distance_m(car.position, target)
    while not arrived:
        before = car
        car, arrived, moved = step(car, target, 2.0, rng)
        total += moved
        steps += 1
        assert 6.0 <= car.speed_mps <= 14.0
        assert 0.0 <= car.heading < 360.0
        assert moved <= 14.0 * 2.0 + 1e-6
        assert abs(car.speed_mps - before.speed_mps) <= 0.8 + 1e-9  # no jumps in speed
        assert BERLIN.contains(car.position)
        assert steps < 10_000
    assert car.position == target
    assert total == pytest.approx(start_distance, rel=1e-3)


def test_random_points_and_trips_stay_inside_the_city() -> None:
    rng = random.Random(3)
    for _ in range(500):
        assert BERLIN.contains(random_point(rng, BERLIN))
        pickup, dropoff = random_trip(rng, BERLIN)
        assert BERLIN.contains(pickup) and BERLIN.contains(dropoff)
        assert 1500.0 <= distance_m(pickup, dropoff) <= 6000.0


def test_the_same_seed_gives_the_same_moves() -> None:
    def drive(seed: int) -> list[Point]:
        rng = random.Random(seed)
        car = Car(random_point(rng, BERLIN))
        out = []
        for _ in range(50):
            car, _, _ = step(car, random_point(rng, BERLIN), 5.0, rng)
            out.append(car.position)
        return out

    assert drive(11) == drive(11)
    assert drive(11) != drive(12)


def test_time_compression_turns_simulated_seconds_into_wall_seconds() -> None:
    clock = Clock(speedup=20.0)
    assert clock.wall(600.0) == pytest.approx(30.0)
    assert clock.sim(1.5) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        Clock(0.0)


def test_report_interval_is_one_to_four_simulated_seconds_but_never_below_the_floor() -> None:
    rng = random.Random(1)
    slow = [report_interval_s(rng, Clock(1.0), min_wall_s=0.25) for _ in range(200)]
    assert all(1.0 <= s <= 4.0 for s in slow)
    fast = [report_interval_s(rng, Clock(100.0), min_wall_s=0.25) for _ in range(200)]
    assert all(s == 0.25 for s in fast)


def test_poisson_schedule_is_deterministic_with_a_seed_and_has_the_asked_rate() -> None:
    assert arrival_times(42, 2.0, 100.0) == arrival_times(42, 2.0, 100.0)
    assert arrival_times(42, 2.0, 100.0) != arrival_times(43, 2.0, 100.0)
    times = arrival_times("seed", 5.0, 2000.0)
    assert all(0 <= a < b < 2000.0 for a, b in itertools.pairwise(times))
    assert len(times) / 2000.0 == pytest.approx(5.0, rel=0.05)
    gaps = poisson_gaps(random.Random(9), 0.5)
    sample = [next(gaps) for _ in range(20_000)]
    assert statistics.mean(sample) == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError):
        next(poisson_gaps(random.Random(1), 0.0))


def test_city_box_parses_the_admin_bbox_format_and_rejects_nonsense() -> None:
    box = BBox.parse("52.3,13.0,52.7,13.8")
    assert str(BBox.parse(str(box))) == str(box)
    assert box.contains(box.center)
    for bad in ("1,2,3", "52.7,13.0,52.3,13.8", "a,b,c,d"):
        with pytest.raises(ValueError):
            BBox.parse(bad)
