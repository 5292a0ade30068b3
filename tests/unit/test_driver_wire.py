"""The driver service's proto <-> domain conversions: API messages, driver.* payloads, trip.*."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from driver import wire
from driver.domain import (
    Driver,
    DriverRating,
    DriverStatus,
    InvalidDriverError,
    OnlineDriver,
    TripHold,
    Vehicle,
    VehicleClass,
)
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CAR = Vehicle("v1", "d1", "Toyota", "Prius", "B-AB123", 4, VehicleClass.XL, NOW)
BO = Driver(
    id="d1",
    name="Bo",
    phone="+447700900123",
    license_number="L-1",
    online=True,
    active_vehicle_id="v1",
    current_trip_id="",
    rating_avg=4.0,
    rating_count=3,
    version=5,
    created_at=NOW,
    vehicles=(CAR,),
)


@pytest.mark.parametrize("value", list(VehicleClass))
def test_each_vehicle_class_is_the_proto_value_of_the_same_name(value: VehicleClass) -> None:
    proto = wire.vehicle_class_to_proto(value)
    assert common_pb2.VehicleClass.Name(proto) == f"VEHICLE_CLASS_{value.name}"


@pytest.mark.parametrize("value", list(DriverStatus))
def test_each_status_is_the_proto_value_of_the_same_name(value: DriverStatus) -> None:
    proto = wire.status_to_proto(value)
    assert driver_pb2.DriverStatus.Name(proto) == f"DRIVER_STATUS_{value.name}"


def test_a_sign_up_request_is_validated() -> None:
    request = driver_pb2.CreateDriverRequest(
        name=" Bo ", phone="+447700900123", password="correct horse battery", license_number="L-1"
    )
    assert wire.new_driver_from_proto(request).name == "Bo"
    request.phone = "12"
    with pytest.raises(InvalidDriverError, match="phone"):
        wire.new_driver_from_proto(request)


def test_a_vehicle_request_is_validated_with_its_class() -> None:
    request = driver_pb2.AddVehicleRequest(
        driver_id="d1",
        make="Toyota",
        model="Prius",
        plate="b ab 123",
        seats=4,
        vehicle_class=common_pb2.VEHICLE_CLASS_COMFORT,
    )
    vehicle = wire.new_vehicle_from_proto(request)
    assert (vehicle.plate, vehicle.vehicle_class) == ("BAB123", VehicleClass.COMFORT)
    request.vehicle_class = common_pb2.VEHICLE_CLASS_UNSPECIFIED
    with pytest.raises(InvalidDriverError, match="vehicle_class"):
        wire.new_vehicle_from_proto(request)


def test_a_driver_becomes_the_api_message_with_status_and_vehicles() -> None:
    message = wire.driver_to_proto(BO)

    assert (message.id, message.name, message.license_number) == ("d1", "Bo", "L-1")
    assert message.status == driver_pb2.DRIVER_STATUS_AVAILABLE
    assert (message.active_vehicle_id, message.current_trip_id) == ("v1", "")
    assert (message.rating_avg, message.rating_count) == (4.0, 3)
    assert message.created_at.ToDatetime(tzinfo=UTC) == NOW
    (vehicle,) = message.vehicles
    assert (vehicle.id, vehicle.plate, vehicle.seats) == ("v1", "B-AB123", 4)
    assert vehicle.vehicle_class == common_pb2.VEHICLE_CLASS_XL
    assert vehicle.created_at.ToDatetime(tzinfo=UTC) == NOW


def test_an_online_driver_carries_the_class_of_the_car() -> None:
    message = wire.online_driver_to_proto(OnlineDriver("d1", VehicleClass.STANDARD))
    assert (message.driver_id, message.vehicle_class) == ("d1", common_pb2.VEHICLE_CLASS_STANDARD)


def test_the_driver_payloads_carry_who_and_which_car() -> None:
    created = wire.driver_created(BO)
    assert (created.driver_id, created.name, created.phone) == ("d1", "Bo", "+447700900123")
    assert created.created_at.ToDatetime(tzinfo=UTC) == NOW

    added = wire.vehicle_added(CAR)
    assert (added.driver_id, added.vehicle_id, added.plate, added.seats) == (
        "d1",
        "v1",
        "B-AB123",
        4,
    )
    assert added.vehicle_class == common_pb2.VEHICLE_CLASS_XL

    online = wire.driver_online(BO, CAR)
    assert (online.driver_id, online.vehicle_id, online.driver_name) == ("d1", "v1", "Bo")
    assert (online.vehicle_make, online.vehicle_model, online.vehicle_plate) == (
        "Toyota",
        "Prius",
        "B-AB123",
    )
    assert online.vehicle_class == common_pb2.VEHICLE_CLASS_XL

    assert wire.driver_offline("d1").driver_id == "d1"


@pytest.mark.parametrize("subject", wire.TRIP_HOLD_SUBJECTS)
def test_an_accept_holds_the_driver_and_the_other_hold_events_free_them(subject: str) -> None:
    payload = events.payload_type(subject)(trip_id="t1", driver_id="d1")
    hold = wire.trip_hold(payload, version=9)
    assert hold == TripHold("d1", "t1", 9, live=subject == events.TRIP_ACCEPTED)


@pytest.mark.parametrize("subject", wire.TRIP_HOLD_SUBJECTS)
def test_a_trip_event_without_a_driver_holds_nobody(subject: str) -> None:
    assert wire.trip_hold(events.payload_type(subject)(trip_id="t1"), version=2) is None


def test_other_trip_events_hold_nobody() -> None:
    started = trip_events.TripStarted(trip_id="t1", driver_id="d1")
    assert wire.trip_hold(started, version=3) is None


def test_only_a_riders_rating_is_a_drivers_rating() -> None:
    by_rider = trip_events.TripRated(
        trip_id="t1", rater=trip_pb2.ACTOR_RIDER, ratee_id="d1", stars=5
    )
    assert wire.driver_rating(by_rider, rated_at=NOW) == DriverRating("t1", "d1", 5, NOW)

    by_driver = trip_events.TripRated(trip_id="t1", rater=trip_pb2.ACTOR_DRIVER, ratee_id="r1")
    assert wire.driver_rating(by_driver, rated_at=NOW) is None


@pytest.mark.parametrize(
    ("driver_id", "stars", "valid"),
    [("d1", 1, True), ("d1", 5, True), ("d1", 0, False), ("d1", 6, False), ("", 3, False)],
)
def test_a_rating_counts_only_with_one_to_five_stars_for_a_driver(
    driver_id: str, stars: int, valid: bool
) -> None:
    assert DriverRating("t1", driver_id, stars, NOW).valid is valid


def test_an_online_page_shows_its_limit_and_points_past_the_last_one_shown() -> None:
    request = driver_pb2.ListOnlineDriversRequest(page_size=2)
    page = wire.online_page_from_proto(request)
    drivers = [OnlineDriver(f"d{i}", VehicleClass.STANDARD) for i in range(3)]

    response = wire.online_drivers_response(page, drivers)
    assert [d.driver_id for d in response.drivers] == ["d0", "d1"]
    request.page_token = response.next_page_token
    assert wire.online_page_from_proto(request).after == "d1"
    assert wire.online_drivers_response(page, drivers[:2]).next_page_token == ""

    request.page_token = "garbage"
    with pytest.raises(InvalidDriverError):
        wire.online_page_from_proto(request)
