"""Batch matching: which waiting trip gets which available driver, decided for a window of
trips at once (``trip.batching`` runs the window; ``trip.dispatch`` reserves and offers).

Pure: no I/O. Nearest-first gives each trip, in arrival order, the driver nearest to it, so a
driver may go far for the first trip and leave a second trip, next to that driver, with a
worse one. Here the trips and drivers of a window are one assignment problem: the pairs
chosen minimise the trips' total estimated pickup time (``scipy.optimize
.linear_sum_assignment``, the Hungarian method's modern form; rectangular problems are fine).

**Cost model.** Estimated pickup time = great-circle distance x a road-distance factor / a
speed. Roads are longer than the straight line; a factor of 1.4 is the usual circuity of
city streets (measured detour ratios of urban road networks lie around 1.2-1.6), and 30 km/h
(8.33 m/s) is a city's average driving speed. Both are settings, and the factor may be set
per H3 region (a river with few bridges, a grid of one-way streets). A pair farther apart
than ``max_pickup_m`` (straight line) is forbidden outright.

**Candidates.** Each trip gets its candidates in the order dispatch should offer them: the
driver the assignment chose first, then the other drivers it may have, by cost, and last the
drivers the assignment gave to other trips of the window (they are taken, unless their trip
ends up without them). Every driver seen, chosen or not, carries a :class:`Reason`, which is
what ExplainDispatch shows an operator.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from trip.pricing import EARTH_RADIUS_M, LatLng, VehicleClass, haversine_m

__all__ = [
    "Candidate",
    "CostModel",
    "DriverHit",
    "Match",
    "Reason",
    "WaitingTrip",
    "match",
    "rank_nearest",
]

# Stands in for a forbidden pair: large enough that the solver takes one only when a row or
# column has nothing else, and such pairs are then dropped from the result.
_FORBIDDEN = 1e12


class Reason(enum.StrEnum):
    """Why a driver was or was not offered a trip (ExplainDispatch shows the value)."""

    ASSIGNED = "assigned"
    """The window's assignment (or nearest-first) chose this driver for the trip."""
    COSTLIER = "costlier"
    """Could have had the trip; a cheaper whole assignment gave the trip someone else."""
    OFFERED_ELSEWHERE = "offered_elsewhere"
    """The assignment gave this driver to another trip of the window."""
    DECLINED_BEFORE = "declined_before"
    """Declined this trip, let its offer lapse or cancelled it before."""
    WRONG_CLASS = "wrong_class"
    """Online with another vehicle class than the trip's."""
    STALE_POSITION = "stale_position"
    """The last position is too old to estimate a pickup from."""
    OUTSIDE_LIMIT = "outside_limit"
    """Farther from the pickup than a driver may be sent."""
    BUSY = "busy"
    """Found available, but taken by another offer or trip before this one could hold them."""


@dataclass(frozen=True, slots=True)
class WaitingTrip:
    """A trip that needs a driver, as the matcher sees it."""

    trip_id: str
    pickup: LatLng
    vehicle_class: VehicleClass | None
    excluded: frozenset[str] = frozenset()
    """Drivers never to be offered this trip again."""
    region: str = ""
    """The H3 region of the pickup (picks the region's road-distance factor)."""


@dataclass(frozen=True, slots=True)
class DriverHit:
    """An available driver a search found."""

    driver_id: str
    position: LatLng
    vehicle_class: VehicleClass | None
    position_age_s: float = 0.0


@dataclass(frozen=True)
class CostModel:
    """How a pickup's time is estimated from the straight line, and how far is too far."""

    road_factor: float = 1.4
    speed_mps: float = 30 / 3.6
    max_pickup_m: float = 5000.0
    max_position_age_s: float = 60.0
    region_factors: Mapping[str, float] = field(default_factory=dict)
    """Road-distance factor of particular H3 regions, where ``road_factor`` is wrong."""

    def __post_init__(self) -> None:
        factors = [self.road_factor, *self.region_factors.values()]
        if not all(math.isfinite(f) and f >= 1.0 for f in factors):
            raise ValueError(f"road-distance factors must be >= 1, got {factors}")
        if not (math.isfinite(self.speed_mps) and self.speed_mps > 0):
            raise ValueError(f"speed must be > 0 m/s, got {self.speed_mps}")
        if not self.max_pickup_m > 0:
            raise ValueError(f"max pickup distance must be > 0 m, got {self.max_pickup_m}")

    def pickup_s(self, distance_m: float, region: str = "") -> float:
        """Estimated seconds to drive ``distance_m`` (straight line) in ``region``."""
        return distance_m * self.region_factors.get(region, self.road_factor) / self.speed_mps


@dataclass(frozen=True, slots=True)
class Candidate:
    """One driver seen for one trip: distance, estimated pickup time, cost, and verdict."""

    driver_id: str
    distance_m: float
    pickup_s: float
    cost: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class Match:
    """A trip's outcome of the window: ``candidates`` in the order to offer them (the
    assigned driver first, when there is one), ``excluded`` the drivers it may not have."""

    trip_id: str
    candidates: tuple[Candidate, ...]
    excluded: tuple[Candidate, ...]

    @property
    def assigned(self) -> str | None:
        first = self.candidates[0] if self.candidates else None
        return first.driver_id if first and first.reason is Reason.ASSIGNED else None


def _verdict(trip: WaitingTrip, driver: DriverHit, distance_m: float, model: CostModel) -> Reason:
    """Why ``driver`` may not have ``trip``; COSTLIER when it may (the assignment decides)."""
    if driver.driver_id in trip.excluded:
        return Reason.DECLINED_BEFORE
    if trip.vehicle_class is not None and driver.vehicle_class not in (None, trip.vehicle_class):
        return Reason.WRONG_CLASS
    if driver.position_age_s > model.max_position_age_s:
        return Reason.STALE_POSITION
    if distance_m > model.max_pickup_m:
        return Reason.OUTSIDE_LIMIT
    return Reason.COSTLIER


# Verdict codes of the matrices in ``match``, by precedence (the first that applies).
_CODES = (
    Reason.COSTLIER,
    Reason.DECLINED_BEFORE,
    Reason.WRONG_CLASS,
    Reason.STALE_POSITION,
    Reason.OUTSIDE_LIMIT,
)


def _distances(trips: Sequence[WaitingTrip], drivers: Sequence[DriverHit]) -> np.ndarray:
    """Great-circle metres from every pickup (rows) to every driver (columns), the formula
    of ``pricing.haversine_m`` on arrays."""
    lat_t = np.radians([t.pickup.lat for t in trips])[:, None]
    lng_t = np.radians([t.pickup.lng for t in trips])[:, None]
    lat_d = np.radians([d.position.lat for d in drivers])[None, :]
    lng_d = np.radians([d.position.lng for d in drivers])[None, :]
    h = (
        np.sin((lat_d - lat_t) / 2) ** 2
        + np.cos(lat_t) * np.cos(lat_d) * np.sin((lng_d - lng_t) / 2) ** 2
    )
    return np.asarray(2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(h))))


def _verdicts(
    trips: Sequence[WaitingTrip],
    drivers: Sequence[DriverHit],
    distance: np.ndarray,
    model: CostModel,
) -> np.ndarray:
    """Index into ``_CODES`` of every (trip, driver): 0 where the pair is allowed."""
    code = np.zeros(distance.shape, dtype=np.int8)
    code[distance > model.max_pickup_m] = 4
    stale = np.array([d.position_age_s > model.max_position_age_s for d in drivers], dtype=bool)
    code[:, stale] = 3
    classes = [d.vehicle_class for d in drivers]
    for i, trip in enumerate(trips):
        if trip.vehicle_class is not None:
            wrong = [c is not None and c is not trip.vehicle_class for c in classes]
            code[i, np.array(wrong, dtype=bool)] = 2
    column = {d.driver_id: j for j, d in enumerate(drivers)}
    for i, trip in enumerate(trips):
        for driver_id in trip.excluded:
            if (j := column.get(driver_id)) is not None:
                code[i, j] = 1
    return code


def match(
    trips: Sequence[WaitingTrip], drivers: Sequence[DriverHit], model: CostModel
) -> dict[str, Match]:
    """Each trip's candidates after solving the window's assignment (see the module
    docstring). Trips and drivers are each taken once, by id."""
    trips = list({t.trip_id: t for t in trips}.values())
    drivers = list({d.driver_id: d for d in drivers}.values())
    if not trips:
        return {}
    if not drivers:
        return {t.trip_id: Match(t.trip_id, (), ()) for t in trips}
    distance = _distances(trips, drivers)
    factor = np.array([model.region_factors.get(t.region, model.road_factor) for t in trips])
    pickup = distance * factor[:, None] / model.speed_mps
    code = _verdicts(trips, drivers, distance, model)
    allowed = code == 0
    assigned_to: dict[int, int] = {}  # trip row -> driver column
    if allowed.any():
        rows, cols = linear_sum_assignment(np.where(allowed, pickup, _FORBIDDEN))
        assigned_to = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if allowed[r, c]}
    taken = set(assigned_to.values())
    distances, pickups, codes = distance.tolist(), pickup.tolist(), code.tolist()
    result: dict[str, Match] = {}
    for i, trip in enumerate(trips):
        chosen: list[Candidate] = []
        others: list[Candidate] = []
        elsewhere: list[Candidate] = []
        excluded: list[Candidate] = []
        mine = assigned_to.get(i)
        row_d, row_p, row_c = distances[i], pickups[i], codes[i]
        for j in np.argsort(pickup[i], kind="stable").tolist():
            reason = _CODES[row_c[j]]
            if reason is Reason.COSTLIER:
                if j == mine:
                    reason = Reason.ASSIGNED
                elif j in taken:
                    reason = Reason.OFFERED_ELSEWHERE
            seen = Candidate(drivers[j].driver_id, row_d[j], row_p[j], row_p[j], reason)
            if reason is Reason.ASSIGNED:
                chosen.append(seen)
            elif reason is Reason.COSTLIER:
                others.append(seen)
            elif reason is Reason.OFFERED_ELSEWHERE:
                elsewhere.append(seen)
            else:
                excluded.append(seen)
        result[trip.trip_id] = Match(trip.trip_id, (*chosen, *others, *elsewhere), tuple(excluded))
    return result


def rank_nearest(trip: WaitingTrip, drivers: Sequence[DriverHit], model: CostModel) -> Match:
    """Nearest-first for one trip, in the same terms as :func:`match` (the explanation of
    a trip dispatched on its own): the nearest driver it may have is ASSIGNED."""
    candidates: list[Candidate] = []
    excluded: list[Candidate] = []
    for driver in drivers:
        d = haversine_m(trip.pickup, driver.position)
        reason = _verdict(trip, driver, d, model)
        pickup_s = model.pickup_s(d, trip.region)
        seen = Candidate(driver.driver_id, d, pickup_s, pickup_s, reason)
        (candidates if reason is Reason.COSTLIER else excluded).append(seen)
    candidates.sort(key=lambda c: (c.distance_m, c.driver_id))
    if candidates:
        first = candidates[0]
        candidates[0] = Candidate(
            first.driver_id, first.distance_m, first.pickup_s, first.cost, Reason.ASSIGNED
        )
    excluded.sort(key=lambda c: (c.distance_m, c.driver_id))
    return Match(trip.trip_id, tuple(candidates), tuple(excluded))
