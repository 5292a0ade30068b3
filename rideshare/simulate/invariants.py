"""The simulator's client-side checks. Pure: the runner collects what the phones saw and
asks these functions what broke.

- every requested trip ended, or is still live for a plausible reason;
- no driver held two trips at once;
- a rider saw positions of its own driver only;
- the edge never answered a 5xx that means "broken" (:func:`is_violation`): 500, 502 and
  every other 5xx are violations; 503 with Retry-After and 504 are the retryable answers of
  a system under load or in an outage (which must never be a 500), counted as retries, and
  a 503 without Retry-After is a violation again (the client cannot know when to come back).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "LIVE_STATES",
    "TERMINAL_STATES",
    "Assignment",
    "ServerError",
    "TripView",
    "Violation",
    "assignment_of",
    "foreign_positions",
    "is_violation",
    "overlapping_assignments",
    "server_errors",
    "unfinished_trips",
]

TERMINAL_STATES = frozenset({"completed", "cancelled", "no_drivers"})
WAITING_STATES = frozenset({"requested", "dispatching"})
DRIVING_STATES = frozenset({"accepted", "arrived", "in_progress"})
LIVE_STATES = WAITING_STATES | DRIVING_STATES


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Assignment:
    """A driver held a trip from ``start`` until ``end`` (None: still holds it)."""

    driver_id: str
    trip_id: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True, slots=True)
class TripView:
    """A trip as last read, with what the simulator knows around it."""

    trip_id: str
    state: str
    age_s: float
    driver_id: str | None = None
    driver_working_it: bool = False  # its driver's app still drives this trip


@dataclass(frozen=True, slots=True)
class ServerError:
    method: str
    path: str
    status: int
    code: str


# 5xx answers an app retries (with backoff) instead of reporting the system broken.
OUTAGE_STATUSES = frozenset({503, 504})


def is_violation(status: int, *, retry_after: bool) -> bool:
    """Whether an answer with HTTP ``status`` breaks the invariants (``retry_after``: it
    carried a Retry-After header). Only 5xx can; 503 and 504 are outage retries, 503 only
    with Retry-After."""
    if status < 500:
        return False
    if status == 503:
        return not retry_after
    return status not in OUTAGE_STATUSES


def _when(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assignment_of(trip: Mapping[str, object]) -> Assignment | None:
    """The driver's hold on a trip, from its TripOut JSON (None when never accepted)."""
    driver = trip.get("driver_id")
    start = _when(trip.get("accepted_at"))
    if not isinstance(driver, str) or not driver or start is None:
        return None
    # ended_at is the end of any kind; completed_at/cancelled_at stand in where it is unset.
    end = next(
        (e for key in ("ended_at", "completed_at", "cancelled_at") if (e := _when(trip.get(key)))),
        None,
    )
    return Assignment(driver, str(trip["id"]), start, end)


def overlapping_assignments(assignments: Iterable[Assignment]) -> list[Violation]:
    """A violation for every pair of trips one driver held at the same time."""
    by_driver: dict[str, list[Assignment]] = defaultdict(list)
    for a in assignments:
        by_driver[a.driver_id].append(a)
    found: list[Violation] = []
    for driver, held in by_driver.items():
        held.sort(key=lambda a: a.start)
        latest: Assignment | None = None  # the one reaching furthest so far
        for a in held:
            if latest is not None and (latest.end is None or latest.end > a.start):
                found.append(
                    Violation(
                        "driver_on_two_trips",
                        f"driver {driver} held trip {a.trip_id} from {a.start.isoformat()} "
                        f"while still on trip {latest.trip_id}",
                    )
                )
            if latest is None or (latest.end is not None and (a.end is None or a.end > latest.end)):
                latest = a
    return found


def foreign_positions(
    seen: Mapping[str, Iterable[str]], assigned: Mapping[str, Iterable[str]]
) -> list[Violation]:
    """A violation for every driver whose position a rider saw without ever being assigned
    one of that rider's trips (``seen`` and ``assigned``: rider id -> driver ids)."""
    found = []
    for rider, drivers in seen.items():
        own = set(assigned.get(rider, ()))
        for driver in sorted(set(drivers) - own):
            found.append(
                Violation(
                    "foreign_driver_position",
                    f"rider {rider} received positions of driver {driver}, not its driver",
                )
            )
    return found


def unfinished_trips(trips: Iterable[TripView], *, dispatch_wait_s: float) -> list[Violation]:
    """A violation for every trip that is neither ended nor plausibly still going: waiting
    for a driver longer than dispatch may take, or assigned while its driver is not on it."""
    found = []
    for t in trips:
        if t.state in TERMINAL_STATES:
            continue
        if t.state in WAITING_STATES and t.age_s <= dispatch_wait_s:
            continue
        if t.state in DRIVING_STATES and t.driver_working_it:
            continue
        if t.state in WAITING_STATES:
            why = (
                f"still {t.state} after {t.age_s:.0f}s "
                f"(dispatch gives up after {dispatch_wait_s:.0f}s)"
            )
        elif t.state in DRIVING_STATES:
            why = f"{t.state} but its driver {t.driver_id} is not driving it"
        else:
            why = f"in unknown state {t.state!r}"
        found.append(Violation("trip_stuck", f"trip {t.trip_id} {why}"))
    return found


def server_errors(errors: Iterable[ServerError], *, limit: int = 20) -> list[Violation]:
    """One violation per distinct answer (method, path, status, code) among ``errors``, the
    ones :func:`is_violation` found."""
    counts: dict[ServerError, int] = defaultdict(int)
    for e in errors:
        counts[e] += 1
    return [
        Violation("server_error", f"{e.method} {e.path} -> {e.status} {e.code} (x{n})")
        for e, n in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    ]
