"""The rider service's proto <-> domain conversions: API messages, rider.* payloads, trip.*."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protos import events
from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rider import wire
from rider.domain import InvalidRiderError, Rider, RiderChanges, RiderRating, TripSummary

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=20)
ADA = Rider("r1", "Ada", "+447700900123", "ada@example.com", 4.5, 2, 3, NOW, LATER)


def test_a_rider_becomes_the_api_message_with_both_times() -> None:
    message = wire.rider_to_proto(ADA)

    assert (message.id, message.name, message.phone, message.email) == (
        "r1",
        "Ada",
        "+447700900123",
        "ada@example.com",
    )
    assert (message.rating_avg, message.rating_count) == (4.5, 2)
    assert message.created_at.ToDatetime(tzinfo=UTC) == NOW
    assert message.updated_at.ToDatetime(tzinfo=UTC) == LATER


def test_a_sign_up_without_an_email_has_none_and_a_bad_one_is_invalid() -> None:
    request = rider_pb2.CreateRiderRequest(
        name="Ada", phone="+447700900123", password="correct horse battery"
    )
    assert wire.new_rider_from_proto(request).email == ""

    request.email = "not-an-email"
    with pytest.raises(InvalidRiderError, match="email"):
        wire.new_rider_from_proto(request)


def test_an_update_leaves_absent_fields_alone_and_an_empty_email_removes_it() -> None:
    assert wire.rider_changes_from_proto(rider_pb2.UpdateRiderRequest(rider_id="r1")) == (
        RiderChanges()
    )
    request = rider_pb2.UpdateRiderRequest(rider_id="r1", name="Ada L", email="")
    assert wire.rider_changes_from_proto(request) == RiderChanges(name="Ada L", email="")


def test_a_trip_summary_keeps_the_proto_numbers_and_leaves_unknowns_unset() -> None:
    bare = TripSummary(
        trip_id="t1",
        state=trip_pb2.TRIP_STATE_DISPATCHING,
        pickup=None,
        dropoff=None,
        fare=None,
        driver_id="",
        vehicle_class=0,
        requested_at=None,
        completed_at=None,
        ended_at=None,
        sort_at=NOW,
    )
    message = wire.trip_to_proto(bare)
    assert message.state == trip_pb2.TRIP_STATE_DISPATCHING
    assert message.vehicle_class == common_pb2.VEHICLE_CLASS_UNSPECIFIED
    for field in ("pickup", "dropoff", "fare", "requested_at", "completed_at", "ended_at"):
        assert not message.HasField(field)

    done = TripSummary(
        trip_id="t1",
        state=trip_pb2.TRIP_STATE_COMPLETED,
        pickup=(52.5, 13.4),
        dropoff=(52.6, 13.5),
        fare=(1234, "EUR"),
        driver_id="d1",
        vehicle_class=common_pb2.VEHICLE_CLASS_XL,
        requested_at=NOW,
        completed_at=LATER,
        ended_at=None,
        sort_at=LATER,
    )
    message = wire.trip_to_proto(done)
    assert (message.pickup.lat, message.dropoff.lng) == (52.5, 13.5)
    assert (message.fare.amount_minor, message.fare.currency) == (1234, "EUR")
    assert message.vehicle_class == common_pb2.VEHICLE_CLASS_XL
    assert message.completed_at.ToDatetime(tzinfo=UTC) == LATER
    assert not message.HasField("ended_at")


def test_the_rider_payloads_carry_the_profile() -> None:
    created = wire.rider_created(ADA)
    assert (created.rider_id, created.name, created.phone, created.email) == (
        "r1",
        "Ada",
        "+447700900123",
        "ada@example.com",
    )
    assert created.created_at.ToDatetime(tzinfo=UTC) == NOW
    updated = wire.rider_updated(ADA)
    assert (updated.rider_id, updated.name, updated.email) == ("r1", "Ada", "ada@example.com")
    assert updated.updated_at.ToDatetime(tzinfo=UTC) == LATER


_STATES = {
    events.TRIP_REQUESTED: trip_pb2.TRIP_STATE_REQUESTED,
    events.TRIP_OFFERED: trip_pb2.TRIP_STATE_DISPATCHING,
    events.TRIP_ACCEPTED: trip_pb2.TRIP_STATE_ACCEPTED,
    events.TRIP_DRIVER_CANCELLED: trip_pb2.TRIP_STATE_DISPATCHING,
    events.TRIP_ARRIVED: trip_pb2.TRIP_STATE_ARRIVED,
    events.TRIP_STARTED: trip_pb2.TRIP_STATE_IN_PROGRESS,
    events.TRIP_COMPLETED: trip_pb2.TRIP_STATE_COMPLETED,
    events.TRIP_CANCELLED: trip_pb2.TRIP_STATE_CANCELLED,
    events.TRIP_NO_DRIVERS: trip_pb2.TRIP_STATE_NO_DRIVERS,
}


def test_the_history_folds_exactly_the_subjects_it_has_a_state_for() -> None:
    assert set(wire.TRIP_UPDATE_SUBJECTS) == set(_STATES)


@pytest.mark.parametrize("subject", wire.TRIP_UPDATE_SUBJECTS)
def test_every_folded_trip_event_gives_the_state_it_leads_to(subject: str) -> None:
    payload = events.payload_type(subject)(trip_id="t1", rider_id="r1")
    update = wire.trip_update(payload, version=7, occurred_at=NOW)

    assert update is not None
    assert (update.trip_id, update.rider_id, update.version) == ("t1", "r1", 7)
    assert update.state == _STATES[subject]
    assert update.occurred_at == NOW


def test_other_trip_events_are_not_folded() -> None:
    rated = trip_events.TripRated(trip_id="t1", stars=5)
    assert wire.trip_update(rated, version=1, occurred_at=NOW) is None


def test_a_request_gives_the_places_fare_class_and_time() -> None:
    requested = trip_events.TripRequested(
        trip_id="t1",
        rider_id="r1",
        pickup=common_pb2.LatLng(lat=52.5, lng=13.4),
        fare=common_pb2.Money(amount_minor=990, currency="EUR"),
        vehicle_class=common_pb2.VEHICLE_CLASS_COMFORT,
    )
    requested.requested_at.FromDatetime(NOW)
    update = wire.trip_update(requested, version=1, occurred_at=LATER)

    assert update is not None
    assert update.pickup == (52.5, 13.4)
    assert update.dropoff is None
    assert (update.fare_minor, update.fare_currency) == (990, "EUR")
    assert update.vehicle_class == common_pb2.VEHICLE_CLASS_COMFORT
    assert update.requested_at == NOW
    assert update.driver_id is None  # says nothing about a driver


def test_a_driver_cancel_clears_the_driver() -> None:
    cancelled = trip_events.TripDriverCancelled(trip_id="t1", rider_id="r1", driver_id="d1")
    update = wire.trip_update(cancelled, version=4, occurred_at=NOW)
    assert update is not None
    assert update.driver_id == ""


def test_a_completion_without_its_own_time_ends_when_the_event_occurred() -> None:
    completed = trip_events.TripCompleted(
        trip_id="t1", rider_id="r1", driver_id="d1", fare=common_pb2.Money(amount_minor=1500)
    )
    update = wire.trip_update(completed, version=6, occurred_at=LATER)
    assert update is not None
    assert update.completed_at == LATER
    assert (update.fare_minor, update.fare_currency) == (1500, None)


def test_a_cancel_costs_its_fee_or_nothing() -> None:
    free = trip_events.TripCancelled(trip_id="t1", rider_id="r1")
    update = wire.trip_update(free, version=2, occurred_at=LATER)
    assert update is not None
    assert (update.fare_minor, update.fare_currency, update.ended_at) == (0, None, LATER)

    fee = trip_events.TripCancelled(
        trip_id="t1", rider_id="r1", fee=common_pb2.Money(amount_minor=500, currency="EUR")
    )
    fee.cancelled_at.FromDatetime(NOW)
    update = wire.trip_update(fee, version=3, occurred_at=LATER)
    assert update is not None
    assert (update.fare_minor, update.fare_currency, update.ended_at) == (500, "EUR", NOW)


def test_only_a_drivers_rating_is_a_riders_rating() -> None:
    by_driver = trip_events.TripRated(
        trip_id="t1", rater=trip_pb2.ACTOR_DRIVER, ratee_id="r1", stars=4
    )
    assert wire.rider_rating(by_driver, rated_at=NOW) == RiderRating("t1", "r1", 4, NOW)

    by_rider = trip_events.TripRated(trip_id="t1", rater=trip_pb2.ACTOR_RIDER, ratee_id="d1")
    assert wire.rider_rating(by_rider, rated_at=NOW) is None


@pytest.mark.parametrize(
    ("rider_id", "stars", "valid"),
    [("r1", 1, True), ("r1", 5, True), ("r1", 0, False), ("r1", 6, False), ("", 3, False)],
)
def test_a_rating_counts_only_with_one_to_five_stars_for_a_rider(
    rider_id: str, stars: int, valid: bool
) -> None:
    assert RiderRating("t1", rider_id, stars, NOW).valid is valid


def test_a_trips_page_shows_its_limit_and_points_past_the_last_one_shown() -> None:
    request = rider_pb2.ListTripsRequest(rider_id="r1", page_size=2)
    page = wire.trips_page_from_proto(request)
    trips = [
        TripSummary(f"t{i}", 1, None, None, None, "", 0, None, None, None, NOW - timedelta(i))
        for i in range(3)
    ]

    response = wire.list_trips_response("r1", page, trips)
    assert [t.trip_id for t in response.trips] == ["t0", "t1"]
    request.page_token = response.next_page_token
    assert wire.trips_page_from_proto(request).after == (trips[1].sort_at, "t1")
    assert wire.list_trips_response("r1", page, trips[:2]).next_page_token == ""

    request.page_size = -1
    with pytest.raises(InvalidRiderError):
        wire.trips_page_from_proto(request)
