"""The city the simulated phones move in. Pure: no I/O, no clocks, randomness passed in.

Positions are WGS84 degrees; distances use an equirectangular projection around the points,
which is exact enough inside one city. Time here is *simulated* seconds: a ``Clock`` with a
``speedup`` turns them into wall seconds (speedup 20: a 10-minute ride takes 30 s).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

__all__ = [
    "BERLIN",
    "BBox",
    "Car",
    "Clock",
    "Point",
    "arrival_times",
    "bearing_deg",
    "distance_m",
    "move_toward",
    "poisson_gaps",
    "random_point",
    "random_trip",
    "report_interval_s",
    "step",
]

EARTH_M_PER_DEG = 111_320.0
CITY_SPEEDS_MPS = (6.0, 14.0)  # 22-50 km/h: city traffic
REPORT_EVERY_S = (1.0, 4.0)  # simulated seconds between a driver app's position reports


@dataclass(frozen=True, slots=True)
class Point:
    lat: float
    lng: float


@dataclass(frozen=True, slots=True)
class BBox:
    min_lat: float
    min_lng: float
    max_lat: float
    max_lng: float

    def __post_init__(self) -> None:
        if not (-90 <= self.min_lat < self.max_lat <= 90):
            raise ValueError(f"latitudes {self.min_lat}..{self.max_lat} do not form a box")
        if not (-180 <= self.min_lng < self.max_lng <= 180):
            raise ValueError(f"longitudes {self.min_lng}..{self.max_lng} do not form a box")

    @classmethod
    def parse(cls, text: str) -> BBox:
        """``minLat,minLng,maxLat,maxLng`` (the edge's admin bbox format)."""
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError(f"city box {text!r} is not minLat,minLng,maxLat,maxLng")
        a, b, c, d = (float(p) for p in parts)
        return cls(a, b, c, d)

    def __str__(self) -> str:
        return f"{self.min_lat},{self.min_lng},{self.max_lat},{self.max_lng}"

    def contains(self, p: Point) -> bool:
        return self.min_lat <= p.lat <= self.max_lat and self.min_lng <= p.lng <= self.max_lng

    @property
    def center(self) -> Point:
        return Point((self.min_lat + self.max_lat) / 2, (self.min_lng + self.max_lng) / 2)


# Central Berlin, about 13 x 13.5 km.
BERLIN = BBox(52.46, 13.30, 52.58, 13.50)


def distance_m(a: Point, b: Point) -> float:
    """Metres between two points (equirectangular; fine at city scale)."""
    mean_lat = math.radians((a.lat + b.lat) / 2)
    dx = (b.lng - a.lng) * EARTH_M_PER_DEG * math.cos(mean_lat)
    dy = (b.lat - a.lat) * EARTH_M_PER_DEG
    return math.hypot(dx, dy)


def bearing_deg(a: Point, b: Point) -> float:
    """Compass heading from ``a`` to ``b`` in [0, 360): 0 north, 90 east."""
    mean_lat = math.radians((a.lat + b.lat) / 2)
    dx = (b.lng - a.lng) * math.cos(mean_lat)
    dy = b.lat - a.lat
    return math.degrees(math.atan2(dx, dy)) % 360.0


def move_toward(a: Point, b: Point, meters: float) -> Point:
    """The point ``meters`` from ``a`` on the straight line to ``b`` (``b`` if it is nearer)."""
    total = distance_m(a, b)
    if total <= meters or total == 0.0:
        return b
    f = meters / total
    return Point(a.lat + (b.lat - a.lat) * f, a.lng + (b.lng - a.lng) * f)


def random_point(rng: random.Random, box: BBox) -> Point:
    return Point(rng.uniform(box.min_lat, box.max_lat), rng.uniform(box.min_lng, box.max_lng))


def random_trip(
    rng: random.Random, box: BBox, *, min_m: float = 1500.0, max_m: float = 6000.0
) -> tuple[Point, Point]:
    """A pickup and a dropoff inside ``box``, ``min_m``..``max_m`` apart when the box allows."""
    pickup = random_point(rng, box)
    dropoff = random_point(rng, box)
    for _ in range(50):
        if min_m <= distance_m(pickup, dropoff) <= max_m:
            break
        dropoff = random_point(rng, box)
    return pickup, dropoff


@dataclass(frozen=True, slots=True)
class Car:
    """A vehicle: where it is, where it faces, how fast it goes (m/s, simulated time)."""

    position: Point
    heading: float = 0.0
    speed_mps: float = 9.0


def step(
    car: Car,
    target: Point,
    dt_s: float,
    rng: random.Random,
    *,
    speeds: tuple[float, float] = CITY_SPEEDS_MPS,
) -> tuple[Car, bool, float]:
    """Drive ``car`` toward ``target`` for ``dt_s`` simulated seconds.

    Speed drifts smoothly inside ``speeds`` (traffic), the heading follows the road to the
    target. Returns the new car, whether it reached the target, and the metres driven.
    """
    lo, hi = speeds
    drift = rng.uniform(-1.0, 1.0) * min(dt_s, 10.0) * 0.4
    speed = min(hi, max(lo, car.speed_mps + drift))
    remaining = distance_m(car.position, target)
    travel = speed * max(dt_s, 0.0)
    heading = bearing_deg(car.position, target) if remaining > 0.5 else car.heading
    if travel >= remaining:
        return Car(target, heading, speed), True, remaining
    return Car(move_toward(car.position, target, travel), heading, speed), False, travel


def parked(car: Car) -> Car:
    """The same car standing still (speed 0 is what its app reports)."""
    return replace(car, speed_mps=0.0)


@dataclass(frozen=True, slots=True)
class Clock:
    """Time compression: ``speedup`` simulated seconds pass per wall second."""

    speedup: float = 1.0

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ValueError(f"speedup must be > 0, not {self.speedup}")

    def wall(self, sim_s: float) -> float:
        return sim_s / self.speedup

    def sim(self, wall_s: float) -> float:
        return wall_s * self.speedup


def report_interval_s(rng: random.Random, clock: Clock, *, min_wall_s: float) -> float:
    """Wall seconds until a driver app's next position report: 1-4 simulated seconds,
    compressed by the clock, but never more often than ``min_wall_s`` (the edge's limits)."""
    return max(min_wall_s, clock.wall(rng.uniform(*REPORT_EVERY_S)))


def poisson_gaps(rng: random.Random, rate_per_s: float) -> Iterator[float]:
    """Gaps between the events of a Poisson process of ``rate_per_s`` (endless)."""
    if not rate_per_s > 0:
        raise ValueError(f"rate must be > 0, not {rate_per_s}")
    while True:
        yield rng.expovariate(rate_per_s)


def arrival_times(seed: int | str, rate_per_s: float, duration_s: float) -> list[float]:
    """Event times in [0, duration_s) of a Poisson process seeded with ``seed``."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    for gap in poisson_gaps(rng, rate_per_s):
        t += gap
        if t >= duration_s:
            return times
        times.append(t)
    raise AssertionError("unreachable")
