"""What the simulated phones know together: every trip they requested and who drives it.

Only the simulator's bookkeeping (request times for latencies, the drivers riders may see);
each phone still learns everything it acts on from the edge itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from rideshare.simulate.invariants import TERMINAL_STATES
from rideshare.simulate.stats import Stats

__all__ = ["Registry", "TripRecord"]


@dataclass
class TripRecord:
    trip_id: str
    rider_id: str
    rider_token: str
    requested_at: float  # monotonic, when the request was sent
    state: str = "requested"
    version: int = 0
    last: dict[str, Any] | None = None  # the newest TripOut seen
    offered_at: float | None = None
    accepted_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass
class Registry:
    stats: Stats
    trips: dict[str, TripRecord] = field(default_factory=dict)
    # trip id -> monotonic time, for offers/accepts seen before the request's answer came back
    _early_offers: dict[str, float] = field(default_factory=dict)
    _early_accepts: dict[str, tuple[float, str]] = field(default_factory=dict)
    # rider id -> driver ids that accepted one of its trips / whose positions it received
    assigned: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    seen_positions: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # driver id -> the trip its app is driving now
    driving: dict[str, str] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)

    def requested(self, record: TripRecord, trip: dict[str, Any]) -> None:
        self.trips[record.trip_id] = record
        self.update(trip)
        if (t := self._early_offers.pop(record.trip_id, None)) is not None:
            self.offered(record.trip_id, t)
        if (early := self._early_accepts.pop(record.trip_id, None)) is not None:
            self.accepted(record.trip_id, early[1], early[0])

    def update(self, trip: dict[str, Any]) -> None:
        """Keep the newest version of a trip the phones saw (frames may come late)."""
        record = self.trips.get(str(trip.get("id")))
        if record is None:
            return
        version = int(trip.get("version") or 0)
        if record.last is not None and version < record.version:
            return
        record.version = version
        record.last = trip
        record.state = str(trip.get("state") or record.state)
        driver = trip.get("driver_id")
        if isinstance(driver, str) and driver:
            self.assigned[record.rider_id].add(driver)

    def offered(self, trip_id: str, at: float) -> None:
        record = self.trips.get(trip_id)
        if record is None:
            self._early_offers.setdefault(trip_id, at)
            return
        if record.offered_at is None:
            record.offered_at = at
            self.stats.latencies["request_to_offer"].add((at - record.requested_at) * 1000)

    def accepted(self, trip_id: str, driver_id: str, at: float) -> None:
        self.driving[driver_id] = trip_id
        record = self.trips.get(trip_id)
        if record is None:
            self._early_accepts[trip_id] = (at, driver_id)
            return
        self.assigned[record.rider_id].add(driver_id)
        self._accepted_latency(record, at)

    def _accepted_latency(self, record: TripRecord, at: float) -> None:
        if record.accepted_at is None:
            record.accepted_at = at
            self.stats.count("trips_matched")
            self.stats.latencies["request_to_accept"].add((at - record.requested_at) * 1000)

    def picked_up(self, trip_id: str, at: float) -> float | None:
        """Wall seconds from the request to the driver at the pickup; None when unknown."""
        record = self.trips.get(trip_id)
        return None if record is None else at - record.requested_at

    def released(self, driver_id: str, trip_id: str) -> None:
        if self.driving.get(driver_id) == trip_id:
            del self.driving[driver_id]

    def live_count(self) -> int:
        return sum(1 for r in self.trips.values() if not r.ended)

    def by_state(self) -> Counter[str]:
        return Counter(r.state for r in self.trips.values())
