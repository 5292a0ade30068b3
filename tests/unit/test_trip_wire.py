"""Trip proto <-> domain conversions, page tokens and the trip service's settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protos.common.v1 import common_pb2
from protos.trip.v1 import events_pb2, trip_pb2
from rideshare.settings import SettingsError
from tests.unit.test_trip_domain import T0, completed, in_progress
from trip import domain, wire
from trip.domain import Actor, InvalidArgumentError, LatLng, TripState, VehicleClass, Viewer
from trip.liveness import LivenessRule
from trip.settings import TripSettings
from trip.wire import decode_page_token, encode_page_token, trips_scope

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def a_trip() -> domain.Trip:
    quote = domain.make_quote(
        quote_id="q1",
        rider_id="r1",
        pickup=LatLng(52.52, 13.405),
        dropoff=LatLng(52.53, 13.43),
        vehicle_class=VehicleClass.XL,
        surge=1.2,
        now=NOW,
    )
    trip = domain.request_trip(
        quote, trip_id="t1", rider_id="r1", pickup=quote.pickup, dropoff=quote.dropoff, now=NOW
    )
    trip = domain.dispatch(trip, now=NOW)
    return domain.offer(trip, offer_id="o1", driver_id="d1", now=NOW)


@pytest.mark.parametrize("vehicle_class", list(VehicleClass))
def test_every_vehicle_class_round_trips(vehicle_class: VehicleClass) -> None:
    assert (
        wire.vehicle_class_from_proto(wire.vehicle_class_to_proto(vehicle_class)) is vehicle_class
    )


@pytest.mark.parametrize("state", list(TripState))
def test_every_state_round_trips(state: TripState) -> None:
    assert wire.state_from_proto(wire.state_to_proto(state)) is state


@pytest.mark.parametrize("actor", list(Actor))
def test_every_actor_round_trips(actor: Actor) -> None:
    assert wire.actor_from_proto(wire.actor_to_proto(actor)) is actor


def test_every_offer_end_reason_has_its_own_proto_value() -> None:
    values = [wire.offer_end_reason_to_proto(reason) for reason in domain.OfferEndReason]

    assert sorted(values) == sorted(
        v
        for v in events_pb2.OfferEndReason.values()
        if v != events_pb2.OFFER_END_REASON_UNSPECIFIED
    )


def test_unspecified_enums_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgumentError):
        wire.vehicle_class_from_proto(common_pb2.VEHICLE_CLASS_UNSPECIFIED)
    with pytest.raises(InvalidArgumentError):
        wire.actor_from_proto(trip_pb2.ACTOR_UNSPECIFIED)
    with pytest.raises(InvalidArgumentError):
        wire.state_from_proto(trip_pb2.TRIP_STATE_UNSPECIFIED)


def test_a_point_out_of_range_names_its_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^pickup: latitude"):
        wire.latlng_from_proto(common_pb2.LatLng(lat=95, lng=0), "pickup")


def test_a_dispatching_trip_shows_its_offer_and_history() -> None:
    message = wire.trip_to_proto(a_trip())

    assert message.state == trip_pb2.TRIP_STATE_DISPATCHING
    assert message.vehicle_class == common_pb2.VEHICLE_CLASS_XL
    assert message.current_offer.offer_id == "o1"
    assert message.current_offer.driver_id == "d1"
    assert not message.HasField("final_fare")
    assert [h.command for h in message.history] == ["request", "dispatch", "offer"]
    assert message.history[0].from_state == trip_pb2.TRIP_STATE_UNSPECIFIED
    assert message.version == 3


def test_the_offered_event_carries_what_the_driver_app_shows() -> None:
    subject, payload = wire.offered(a_trip(), distance_to_pickup_m=321.0)

    assert subject == "trip.offered"
    assert isinstance(payload, events_pb2.TripOffered)
    assert (payload.offer_id, payload.driver_id, payload.attempt) == ("o1", "d1", 1)
    assert payload.expires_at.ToDatetime(tzinfo=UTC) == NOW + domain.OFFER_TIMEOUT


def test_page_tokens_round_trip_and_garbage_is_rejected() -> None:
    trip = a_trip()
    scope = trips_scope([TripState.REQUESTED], rider_id="r1", driver_id=None)
    token = encode_page_token(trip, scope=scope)
    assert decode_page_token(token, scope=scope) == (trip.requested_at, trip.id)
    for bad in ("garbage!", "W10", "bnVsbA"):
        with pytest.raises(InvalidArgumentError):
            decode_page_token(bad, scope=scope)


def test_a_list_trips_token_is_good_only_for_the_query_that_made_it() -> None:
    scope = trips_scope([TripState.REQUESTED], rider_id="r1", driver_id=None)
    token = encode_page_token(a_trip(), scope=scope)
    for other in (
        trips_scope([TripState.REQUESTED], rider_id="r2", driver_id=None),
        trips_scope([TripState.REQUESTED], rider_id="r1", driver_id="d1"),
        trips_scope([], rider_id="r1", driver_id=None),
    ):
        with pytest.raises(InvalidArgumentError, match="another list"):
            decode_page_token(token, scope=other)
    same = trips_scope([TripState.REQUESTED, TripState.REQUESTED], rider_id="r1", driver_id=None)
    assert decode_page_token(token, scope=same)[1] == a_trip().id


def test_settings_from_env_read_every_dispatch_knob() -> None:
    settings = TripSettings.from_env(
        {
            "RIDESHARE_LOCATION_ADDR": "loc:1",
            "RIDESHARE_OFFER_TIMEOUT_S": "0.5",
            "RIDESHARE_DISPATCH_RADII_M": "500,1500",
            "RIDESHARE_DISPATCH_PARALLEL_OFFERS": "3",
        }
    )

    assert settings.location_addr == "loc:1"
    plan = settings.plan()
    assert plan.offer_timeout == timedelta(seconds=0.5)
    assert plan.radius_steps_m == (500, 1500)
    assert plan.parallel_offers == 3
    assert TripSettings.from_env({}).plan().parallel_offers == 1
    assert TripSettings.from_env({}).location_addr == "127.0.0.1:50054"


def test_settings_from_env_read_every_clock_of_the_live_states() -> None:
    settings = TripSettings.from_env(
        {
            "RIDESHARE_DRIVER_SILENT_S": "45",
            "RIDESHARE_PICKUP_LIMIT_S": "900",
            "RIDESHARE_BOARDING_WAIT_S": "300",
            "RIDESHARE_RIDE_SILENT_FLAG_S": "90",
            "RIDESHARE_RIDE_SILENT_END_S": "600",
            "RIDESHARE_DISPATCH_LIMIT_S": "400",
            "RIDESHARE_TRIP_MAX_LIFE_S": "7200",
            "RIDESHARE_SWEEP_POLL_S": "1",
        }
    )

    policy = settings.liveness()
    assert [
        policy.driver_silent,
        policy.pickup_limit,
        policy.boarding_wait,
        policy.ride_silent_flag,
        policy.ride_silent_end,
        policy.dispatch_limit,
        policy.max_life,
    ] == [timedelta(seconds=n) for n in (45, 900, 300, 90, 600, 400, 7200)]
    assert settings.sweep_poll_s == 1.0


def test_the_dispatch_clock_defaults_to_outlast_dispatch_itself() -> None:
    assert TripSettings.from_env({}).dispatch_limit_s == 300.0
    longer = TripSettings.from_env({"RIDESHARE_DISPATCH_MAX_WAIT_S": "600"})
    assert longer.dispatch_limit_s == 600 + 15 + 60


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RIDESHARE_DISPATCH_RADII_M", "5000,2000"),
        ("RIDESHARE_DISPATCH_RADII_M", "two"),
        ("RIDESHARE_OFFER_TIMEOUT_S", "-1"),
        ("RIDESHARE_DISPATCH_PARALLEL_OFFERS", "0"),
        ("RIDESHARE_DISPATCH_LIMIT_S", "100"),
        ("RIDESHARE_RIDE_SILENT_FLAG_S", "900"),
        ("RIDESHARE_DRIVER_SILENT_S", "0"),
    ],
)
def test_bad_settings_fail_fast_naming_the_problem(name: str, value: str) -> None:
    with pytest.raises(SettingsError):
        TripSettings.from_env({name: value})


def test_a_ride_the_system_ended_goes_on_the_wire_with_who_why_and_the_charge_basis() -> None:
    flagged = domain.flag(in_progress(), now=T0 + timedelta(minutes=9), reason="silent 120 s")
    ended = domain.end_ride(
        flagged,
        now=T0 + timedelta(minutes=22),
        reason="silent 900 s",
        last_heard=T0 + timedelta(minutes=7),
    )

    subject, payload = wire.completed(
        ended, by=Actor.SYSTEM, rule=LivenessRule.RIDE_SILENT, reason="silent 900 s"
    )
    assert subject == "trip.completed"
    assert isinstance(payload, events_pb2.TripCompleted)
    assert payload.completed_by == trip_pb2.ACTOR_SYSTEM
    assert payload.liveness_rule == events_pb2.LIVENESS_RULE_RIDE_SILENT
    assert payload.charge_basis == trip_pb2.CHARGE_BASIS_QUOTE
    assert (payload.reason, payload.fare.amount_minor) == (
        "silent 900 s",
        ended.quoted_fare.amount_minor,
    )
    message = wire.trip_to_proto(ended)
    assert message.charge_basis == trip_pb2.CHARGE_BASIS_QUOTE
    assert message.flag_reason == "silent 120 s"
    assert message.flagged_at.ToDatetime(UTC) == T0 + timedelta(minutes=9)
    _, flag_event = wire.flagged(
        flagged, rule=LivenessRule.RIDE_SILENT, silent_since=T0 + timedelta(minutes=7)
    )
    assert isinstance(flag_event, events_pb2.TripFlagged)
    assert flag_event.silent_since.ToDatetime(UTC) == T0 + timedelta(minutes=7)


def test_a_driver_completed_ride_is_metered_and_names_the_driver() -> None:
    _, payload = wire.completed(completed())
    assert isinstance(payload, events_pb2.TripCompleted)
    assert payload.completed_by == trip_pb2.ACTOR_DRIVER
    assert payload.charge_basis == trip_pb2.CHARGE_BASIS_METERED
    assert payload.liveness_rule == events_pb2.LIVENESS_RULE_UNSPECIFIED


def test_a_completed_trip_shows_its_fare_settlement() -> None:
    trip = completed()
    message = wire.trip_to_proto(trip).settlement
    assert message.rule == trip_pb2.FARE_RULE_WITHIN_BAND
    assert message.quoted_fare.amount_minor == trip.quoted_fare.amount_minor
    assert message.distance_source == trip_pb2.MEASURE_SOURCE_LOCATION_TRACK
    assert message.duration_source == trip_pb2.MEASURE_SOURCE_SERVER_CLOCK
    assert message.HasField("measured_distance_m") and message.HasField("measured_fare")
    assert not message.HasField("reported_distance_m")
    assert not wire.trip_to_proto(in_progress()).HasField("settlement")


def test_an_unmeasured_settlement_leaves_the_measured_fields_unset() -> None:
    trip = domain.complete(
        in_progress(), driver_id="d1", now=T0 + timedelta(minutes=9), reported_distance_m=0
    )
    message = wire.trip_to_proto(trip).settlement
    assert message.rule == trip_pb2.FARE_RULE_NO_MEASUREMENT
    assert message.distance_source == trip_pb2.MEASURE_SOURCE_NONE
    assert not message.HasField("measured_distance_m")
    assert not message.HasField("measured_fare")
    assert message.HasField("reported_distance_m") and message.reported_distance_m == 0


@pytest.mark.parametrize(
    ("name", "value"), [("RIDESHARE_FARE_BAND_UP", "1.5"), ("RIDESHARE_FARE_BAND_DOWN", "-0.1")]
)
def test_a_fare_band_outside_zero_to_one_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        TripSettings.from_env({name: value})


def test_a_reader_is_a_user_with_an_id_or_a_service_reading_for_itself() -> None:
    assert wire.viewer_from_proto(trip_pb2.ACTOR_RIDER, "r1") == Viewer(Actor.RIDER, "r1")
    assert wire.viewer_from_proto(trip_pb2.ACTOR_UNSPECIFIED, "") == Viewer(Actor.SYSTEM)
    assert wire.viewer_from_proto(trip_pb2.ACTOR_SYSTEM, "") == Viewer(Actor.SYSTEM)


@pytest.mark.parametrize(
    ("actor", "actor_id", "message"),
    [
        (trip_pb2.ACTOR_RIDER, "", "actor_id is required"),
        (trip_pb2.ACTOR_DRIVER, "d.1", "actor_id must be"),
        (trip_pb2.ACTOR_ADMIN, "", "actor_id is required"),
        (-5, "r1", "actor -5 must be specified and valid"),
        (42, "r1", "actor 42 must be specified and valid"),
    ],
)
def test_a_reader_with_an_unknown_actor_or_no_id_is_invalid_argument(
    actor: int, actor_id: str, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{message}"):
        wire.viewer_from_proto(actor, actor_id)


def test_an_optional_id_filter_is_none_absent_and_checked_present() -> None:
    assert wire.optional_id_of(trip_pb2.ListTripsRequest(), "rider_id") is None
    assert wire.optional_id_of(trip_pb2.ListTripsRequest(rider_id="r1"), "rider_id") == "r1"
    for bad in ("", "r*", "x" * 65):
        with pytest.raises(InvalidArgumentError, match=r"^rider_id"):
            wire.optional_id_of(trip_pb2.ListTripsRequest(rider_id=bad), "rider_id")
