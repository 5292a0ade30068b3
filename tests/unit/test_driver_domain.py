"""The driver service's pure rules: sign-up, vehicles, going online and offline, status."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from driver import domain
from driver.domain import (
    Driver,
    DriverStatus,
    InvalidDriverError,
    NoVehicleError,
    OnTripError,
    Vehicle,
    VehicleClass,
    VehicleNotOwnedError,
)
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2

NOW = datetime(2024, 5, 1, tzinfo=UTC)
CAR = Vehicle("v1", "d1", "Toyota", "Prius", "B-AB123", 4, VehicleClass.STANDARD, NOW)


def _driver(**fields: object) -> Driver:
    values: dict[str, object] = {
        "id": "d1",
        "name": "Bo",
        "phone": "+447700900123",
        "license_number": "L-1",
        "online": False,
        "active_vehicle_id": "",
        "current_trip_id": "",
        "rating_avg": 0.0,
        "rating_count": 0,
        "version": 1,
        "created_at": NOW,
        "vehicles": (CAR,),
    }
    values.update(fields)
    return Driver(**values)  # type: ignore[arg-type]


def test_the_domain_enums_match_the_protos_by_number() -> None:
    assert {c.name: c.value for c in VehicleClass} == {
        name.removeprefix("VEHICLE_CLASS_"): value
        for name, value in common_pb2.VehicleClass.items()
        if value
    }
    assert {s.name: s.value for s in DriverStatus} == {
        name.removeprefix("DRIVER_STATUS_"): value
        for name, value in driver_pb2.DriverStatus.items()
        if value
    }


def test_status_is_on_trip_while_a_trip_holds_the_driver_even_when_offline() -> None:
    assert _driver().status is DriverStatus.OFFLINE
    assert _driver(online=True).status is DriverStatus.AVAILABLE
    assert _driver(online=True, current_trip_id="t1").status is DriverStatus.ON_TRIP
    assert _driver(current_trip_id="t1").status is DriverStatus.ON_TRIP


def test_going_online_needs_an_own_vehicle_and_no_trip() -> None:
    with pytest.raises(NoVehicleError):
        _driver(vehicles=()).vehicle_to_go_online("")
    with pytest.raises(VehicleNotOwnedError):
        _driver().vehicle_to_go_online("someone-elses")
    with pytest.raises(OnTripError):
        _driver(online=True, current_trip_id="t1").vehicle_to_go_online("v1")
    assert _driver().vehicle_to_go_online("v1") == CAR


def test_going_online_again_with_the_same_vehicle_is_a_no_op() -> None:
    assert _driver(online=True, active_vehicle_id="v1").vehicle_to_go_online("v1") is None


def test_going_offline_is_refused_on_a_trip_and_a_no_op_when_offline() -> None:
    assert _driver(online=True).must_go_offline()
    assert not _driver().must_go_offline()
    with pytest.raises(OnTripError):
        _driver(online=True, current_trip_id="t1").must_go_offline()


def test_plates_are_upper_case_without_spaces() -> None:
    assert domain.normalize_plate(" b-ab 123 ") == "B-AB123"
    for bad in ("", "   ", "AB_12", "A" * 16):
        with pytest.raises(InvalidDriverError, match="plate"):
            domain.normalize_plate(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seats": 0}, "seats"),
        ({"seats": 9}, "seats"),
        ({"vehicle_class": 0}, "vehicle_class"),
        ({"vehicle_class": 99}, "vehicle_class"),
        ({"make": ""}, "make"),
        ({"model": " "}, "model"),
    ],
)
def test_bad_vehicles_name_the_field(change: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "make": "Kia",
        "model": "Niro",
        "plate": "AB1",
        "seats": 4,
        "vehicle_class": 1,
    }
    values.update(change)
    with pytest.raises(InvalidDriverError, match=field):
        domain.new_vehicle(**values)  # type: ignore[arg-type]


def test_signup_rules() -> None:
    signup = domain.new_driver(
        name=" Bo ", phone="+447700900123", password="correct horse battery", license_number=" L-1 "
    )
    assert (signup.name, signup.license_number) == ("Bo", "L-1")
    with pytest.raises(InvalidDriverError, match="license_number"):
        domain.new_driver(
            name="Bo", phone="+447700900123", password="correct horse battery", license_number=""
        )
    with pytest.raises(InvalidDriverError, match=r"E\.164"):
        domain.new_driver(
            name="Bo", phone="07700900123", password="correct horse battery", license_number="L"
        )
