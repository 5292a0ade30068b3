"""Location rules with no I/O: what a valid position is, ordering, staleness, search bounds."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rideshare import geo, ids

__all__ = [
    "MAX_AREA_LIMIT",
    "MAX_BATCH",
    "MAX_RADIUS_M",
    "MAX_SEARCH_LIMIT",
    "Availability",
    "AvailabilityConflictError",
    "InvalidArgumentError",
    "LocationError",
    "NearbyHit",
    "Position",
    "Reject",
    "Search",
    "SnapshotEntry",
    "TrackDistance",
    "UnknownDriverError",
    "UnknownTrackError",
    "check_area",
    "check_batch",
    "check_hold",
    "check_id",
    "check_position",
    "clamp_limit",
    "is_stale",
    "snapshot_entries",
    "track_distance",
]

T = TypeVar("T")
U = TypeVar("U")

MAX_RADIUS_M = 50_000.0
MAX_SEARCH_LIMIT = 50
DEFAULT_SEARCH_LIMIT = 10
MAX_AREA_LIMIT = 5_000
DEFAULT_AREA_LIMIT = 1_000
MAX_BATCH = 1_000
"""Searches of one NearestDriversBatch, holds of one ReserveDrivers: a dispatch window's worth,
and a bound on what one call asks of Redis."""
MAX_DRIVER_ID_LEN = ids.MAX_ID_LEN
MAX_LAT = geo.MAX_LAT
TRACK_CAP = 7_200
"""Fixes kept per trip: two hours at one report a second (eight at the usual four), 56 bytes
each, so at most ~400 KB per trip; a longer ride keeps its newest fixes."""
TRACK_MAX_SPEED_MPS = 55.0
"""About 200 km/h: faster than any car in a city. A step from one fix to the next that
implies more is a jump of the GPS (or a forged fix), not driving."""
TRACK_MAX_ACCURACY_M = 50.0
"""Fixes less accurate than this are ignored, as production ingest does (0 = unknown: kept)."""


class LocationError(Exception):
    """Base of every location-service error."""


class InvalidArgumentError(LocationError):
    """The request itself is malformed."""


class UnknownDriverError(LocationError):
    """No position is stored for the driver."""


class UnknownTrackError(LocationError):
    """No position is recorded for the trip."""


class AvailabilityConflictError(LocationError):
    """A compare-and-set on availability found another value."""

    def __init__(self, driver_id: str, expected: Availability, actual: Availability) -> None:
        super().__init__(
            f"driver {driver_id} is {actual.name}, not {expected.name}: availability unchanged"
        )
        self.actual = actual


class Availability(enum.IntEnum):
    """Whether dispatch may offer a trip to the driver. Values match the wire enum."""

    AVAILABLE = 1
    OFFERED = 2
    ON_TRIP = 3
    OFFLINE = 4


class Reject(enum.IntEnum):
    """Why an update was not applied. Values match the wire enum."""

    MISSING_DRIVER_ID = 1
    INVALID_COORDINATES = 2
    INVALID_HEADING = 3
    INVALID_MOTION = 4
    INVALID_TIMESTAMP = 5
    OUT_OF_ORDER = 6


@dataclass(frozen=True, slots=True)
class Position:
    """A driver's position as stored: the phone's fix plus the service's receive time."""

    driver_id: str
    lat: float
    lng: float
    heading: float
    speed_mps: float
    accuracy_m: float
    client_ts_ms: int
    server_ts_ms: int
    availability: Availability = Availability.OFFLINE
    vehicle_class: int = 0


@dataclass(frozen=True, slots=True)
class Search:
    """One nearest-driver search, checked: fresh AVAILABLE drivers of ``vehicle_class`` (None:
    any) within ``radius_m`` of the centre, but ``exclude``, nearest first, at most ``limit``."""

    lat: float
    lng: float
    radius_m: float
    limit: int
    vehicle_class: int | None
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NearbyHit:
    """One search result: the stored position plus the distance from the centre."""

    position: Position
    distance_m: float


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One driver's availability as the systems of record state it, for a rebuild."""

    driver_id: str
    vehicle_class: int
    availability: Availability
    trip_id: str = ""  # the trip holding the driver (OFFERED or ON_TRIP)


def snapshot_entries(
    online: Iterable[tuple[str, int]], held: Iterable[tuple[str, str, bool]]
) -> list[SnapshotEntry]:
    """The availability of every online driver, from the driver service's online drivers
    (id, vehicle class) and the trip service's holds (driver id, trip id, offered).

    The rule the events apply, stated once for a rebuild: on a live trip -> ON_TRIP; else
    with a pending offer -> OFFERED for that trip; else AVAILABLE. Holds on drivers who are
    not online are left out (offline wins: the trip service ends those holds when it sees
    driver.offline), and an assignment wins over an offer if both were ever listed.
    """
    holds: dict[str, tuple[str, bool]] = {}
    for driver_id, trip_id, offered in held:
        if driver_id not in holds or not offered:
            holds[driver_id] = (trip_id, offered)
    entries = []
    for driver_id, vehicle_class in online:
        hold = holds.get(driver_id)
        if hold is None:
            entries.append(SnapshotEntry(driver_id, vehicle_class, Availability.AVAILABLE))
        else:
            trip_id, offered = hold
            availability = Availability.OFFERED if offered else Availability.ON_TRIP
            entries.append(SnapshotEntry(driver_id, vehicle_class, availability, trip_id))
    return entries


@dataclass(frozen=True, slots=True)
class TrackDistance:
    """What a trip's recorded track measures between two instants (GetTripDistance)."""

    distance_m: float
    points_used: int
    points_ignored: int
    first_ts_ms: int = 0
    last_ts_ms: int = 0


def track_distance(
    fixes: Iterable[Position],
    *,
    since_ms: int,
    until_ms: int,
    max_speed_mps: float = TRACK_MAX_SPEED_MPS,
    max_accuracy_m: float = TRACK_MAX_ACCURACY_M,
) -> TrackDistance:
    """The distance along ``fixes`` (in the order they were applied) received within
    ``[since_ms, until_ms]`` of this service's clock.

    A fix less accurate than ``max_accuracy_m`` is ignored; so is one that the phone's clock
    says was reached from the last kept fix faster than ``max_speed_mps`` (a jump: the next
    fixes are measured from the last kept one, so a teleport adds nothing, and an honest
    gap adds the straight line). The phone's clock paces the steps because delivery delays
    bunch receive times; the service's clock bounds the whole, since a phone may lie about
    time: the total is at most ``max_speed_mps`` times the span between the first and last
    kept fix's receive times. Filtering only ever shortens a track.
    """
    total = 0.0
    used = ignored = 0
    first: Position | None = None
    last: Position | None = None
    for fix in fixes:
        if not since_ms <= fix.server_ts_ms <= until_ms:
            continue
        if fix.accuracy_m > max_accuracy_m:
            ignored += 1
            continue
        if last is None:
            first = last = fix
            used += 1
            continue
        step = geo.distance_m(last.lat, last.lng, fix.lat, fix.lng)
        seconds = (fix.client_ts_ms - last.client_ts_ms) / 1000
        if seconds <= 0 or step > max_speed_mps * seconds:
            ignored += 1
            continue
        total += step
        last = fix
        used += 1
    if first is None or last is None:
        return TrackDistance(0.0, 0, ignored)
    span_s = max(0, last.server_ts_ms - first.server_ts_ms) / 1000
    total = min(total, max_speed_mps * span_s)
    return TrackDistance(total, used, ignored, first.server_ts_ms, last.server_ts_ms)


def check_position(
    driver_id: str,
    lat: float,
    lng: float,
    heading: float,
    speed_mps: float,
    accuracy_m: float,
    client_ts_ms: int,
    *,
    now_ms: int,
    max_future_ms: int,
) -> tuple[Reject, str] | None:
    """None when the update is well formed, else the reason and a readable detail.

    The fix itself is checked by :func:`rideshare.geo.check_position`, the rule the edge
    applies too. Ordering against the stored position is not checked here: that needs the
    store.
    """
    try:
        ids.check_id(driver_id, "driver_id")
    except ids.InvalidIdError as exc:
        return Reject.MISSING_DRIVER_ID, str(exc)
    problem = geo.check_position(
        lat,
        lng,
        heading,
        speed_mps,
        accuracy_m,
        client_ts_ms,
        now_ms=now_ms,
        max_future_ms=max_future_ms,
    )
    if problem is None:
        return None
    return Reject[problem[0].name], problem[1]


def check_id(value: str, field: str) -> str:
    """``value`` when it is a well-formed id (rideshare.ids), else InvalidArgumentError naming
    ``field``: a driver id names a NATS subject and Redis keys."""
    try:
        return ids.check_id(value, field)
    except ids.InvalidIdError as exc:
        raise InvalidArgumentError(str(exc)) from None


def check_hold(driver_id: str, trip_id: str) -> tuple[str, str]:
    """(driver id, trip id) of a hold (ReserveDriver, ReleaseDriver); raises unless it names
    both its driver and trip."""
    return check_id(driver_id, "driver_id"), check_id(trip_id, "trip_id")


def check_batch(items: Sequence[T], check: Callable[[T], U], *, field: str) -> list[U]:
    """``check`` of every item of a batch call (NearestDriversBatch, ReserveDrivers), the rule
    of the single call applied to each. The first bad item fails the whole batch with an
    InvalidArgumentError that names its index (``searches[3]: ...``), so nothing of a batch
    is done unless all of it is well formed; so does a batch of more than MAX_BATCH items."""
    if len(items) > MAX_BATCH:
        raise InvalidArgumentError(f"{field}: {len(items)} items, at most {MAX_BATCH} per call")
    checked = []
    for index, item in enumerate(items):
        try:
            checked.append(check(item))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{field}[{index}]: {exc}") from None
    return checked


def is_stale(last_seen_ms: int, *, now_ms: int, stale_ms: int) -> bool:
    """A driver not heard from for longer than ``stale_ms`` is out of search."""
    return now_ms - last_seen_ms > stale_ms


def clamp_limit(limit: int, *, default: int, maximum: int) -> int:
    """0 means the default; anything above the cap is the cap."""
    if limit < 0:
        raise InvalidArgumentError(f"limit {limit} must be >= 0")
    return default if limit == 0 else min(limit, maximum)


def check_search(lat: float, lng: float, radius_m: float) -> float:
    """The radius to search with, capped; raises for a malformed centre or radius."""
    if not (-MAX_LAT <= lat <= MAX_LAT and -180.0 <= lng <= 180.0):
        raise InvalidArgumentError(
            f"centre ({lat}, {lng}) is not a coordinate the index covers "
            f"(lat within ±{MAX_LAT}, lng within ±180)"
        )
    if not 0.0 < radius_m < math.inf:
        raise InvalidArgumentError(f"radius_m {radius_m} must be a finite number > 0")
    return min(radius_m, MAX_RADIUS_M)


def check_area(min_lat: float, min_lng: float, max_lat: float, max_lng: float) -> None:
    """Raises for a box that is not a valid, non-empty, non-antimeridian-crossing area."""
    for name, value, bound in (
        ("min_lat", min_lat, MAX_LAT),
        ("max_lat", max_lat, MAX_LAT),
        ("min_lng", min_lng, 180.0),
        ("max_lng", max_lng, 180.0),
    ):
        if not -bound <= value <= bound:
            raise InvalidArgumentError(f"{name} {value} not in [-{bound}, {bound}]")
    if min_lat > max_lat or min_lng > max_lng:
        raise InvalidArgumentError("the box must have min_lat <= max_lat and min_lng <= max_lng")


def box_size_m(
    min_lat: float, min_lng: float, max_lat: float, max_lng: float
) -> tuple[float, float]:
    """Width and height of a lat/lng box in metres (at its middle latitude), for BYBOX."""
    earth_m_per_deg = 111_320.0
    mid = math.radians((min_lat + max_lat) / 2)
    width = max((max_lng - min_lng) * earth_m_per_deg * math.cos(mid), 1.0)
    height = max((max_lat - min_lat) * earth_m_per_deg, 1.0)
    return width, height
