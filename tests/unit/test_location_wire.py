"""The live feed builds DriverPosition bytes from PositionUpdate bytes; the contract allows it."""

from __future__ import annotations

from protos.location.v1 import location_pb2 as pb


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
    tail = pb.DriverPosition(
        server_ts_ms=1_700_000_000_200, availability=pb.AVAILABILITY_ON_TRIP
    ).SerializeToString()

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
