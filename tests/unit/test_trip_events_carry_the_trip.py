"""Trip events carry the whole trip after them (``trip``), so that the edge need not read it
back, but only when the publisher holds the trip's whole history."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_trip_wire import NOW, a_trip
from trip import domain, wire
from trip.domain import Actor


def test_an_event_carries_the_trip_as_get_trip_shows_it() -> None:
    after = domain.accept(a_trip(), driver_id="d1", offer_id="o1", now=NOW)
    _, message = wire.accepted(after, offer_id="o1")
    assert message.HasField("trip")
    assert message.trip == wire.trip_to_proto(after)  # type: ignore[attr-defined]
    assert len(message.trip.history) == len(after.history) == after.version  # type: ignore[attr-defined]


def test_an_event_of_a_trip_loaded_without_history_carries_none() -> None:
    loaded = replace(a_trip(), history=())  # as dispatch loads it
    ended = domain.exhaust(loaded, now=NOW, reason="no drivers within 10 km")
    _, message = wire.no_drivers(ended, max_radius_m=10_000.0)
    assert not message.HasField("trip")
    assert ended.history[0].actor is Actor.SYSTEM
