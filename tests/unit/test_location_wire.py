"""Location's wire conversions; and the live feed's DriverPosition bytes built from
PositionUpdate bytes, which the contract allows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from location import wire
from location.domain import Availability, Position, Reject
from protos.common.v1 import common_pb2
from protos.location.v1 import location_pb2 as pb
from protos.trip.v1 import events_pb2 as trip_events


def test_update_fields_have_the_same_numbers_and_types_in_driver_position() -> None:
    update_fields = pb.PositionUpdate.DESCRIPTOR.fields_by_number
    position_fields = pb.DriverPosition.DESCRIPTOR.fields_by_number
    for number, field in update_fields.items():
        twin = position_fields[number]
        assert (twin.name, twin.type) == (field.name, field.type)


def test_update_bytes_plus_service_fields_parse_as_the_full_driver_position() -> None:
    update = pb.PositionUpdate(
        driver_id="d-1",
        lat=52.5,
        lng=13.4,
        heading=181.5,
        speed_mps=9.5,
        accuracy_m=4.0,
        client_ts_ms=1_700_000_000_123,
    )
    tail = wire.position_tail(server_ts_ms=1_700_000_000_200, availability=Availability.ON_TRIP)

    parsed = pb.DriverPosition.FromString(update.SerializeToString() + tail)

    assert parsed == pb.DriverPosition(
        driver_id="d-1",
        lat=52.5,
        lng=13.4,
        heading=181.5,
        speed_mps=9.5,
        accuracy_m=4.0,
        client_ts_ms=1_700_000_000_123,
        server_ts_ms=1_700_000_000_200,
        availability=pb.AVAILABILITY_ON_TRIP,
    )


@pytest.mark.parametrize("value", list(Availability), ids=lambda v: v.name)
def test_every_availability_has_the_wire_value_of_the_same_name(value: Availability) -> None:
    assert pb.Availability.Name(wire.availability_to_proto(value)) == f"AVAILABILITY_{value.name}"


@pytest.mark.parametrize("value", list(Reject), ids=lambda v: v.name)
def test_every_reject_reason_has_the_wire_value_of_the_same_name(value: Reject) -> None:
    assert pb.RejectReason.Name(wire.reject_to_proto(value)) == f"REJECT_REASON_{value.name}"


def test_a_stored_position_reads_back_as_the_same_wire_position() -> None:
    position = Position(
        "d-1", 52.5, 13.4, 181.5, 9.5, 4.0, 1_700_000_000_123, 1_700_000_000_200,
        Availability.OFFERED, common_pb2.VEHICLE_CLASS_XL,
    )  # fmt: skip

    message = wire.position_to_proto(position)

    assert message.availability == pb.AVAILABILITY_OFFERED
    assert message.vehicle_class == common_pb2.VEHICLE_CLASS_XL
    update = pb.PositionUpdate(
        driver_id="d-1",
        lat=52.5,
        lng=13.4,
        heading=181.5,
        speed_mps=9.5,
        accuracy_m=4.0,
        client_ts_ms=1_700_000_000_123,
    )
    stored = wire.positions_from_updates([update], server_ts_ms=1_700_000_000_200)
    assert stored == [replace(position, availability=Availability.OFFLINE, vehicle_class=0)]


def test_a_trip_event_without_a_driver_holds_nobody() -> None:
    assert wire.held_driver(trip_events.TripCancelled(trip_id="t-1")) is None
    assert wire.held_driver(trip_events.TripCancelled(trip_id="t-1", driver_id="d-1")) == (
        "d-1",
        "t-1",
    )
