"""The contracts: generated code is fresh, and the protos keep the conventions others rely on."""

from __future__ import annotations

import importlib
import keyword
import re
from types import ModuleType

import pytest
from google.protobuf import descriptor, timestamp_pb2
from google.protobuf.message import Message

from protos import events
from protos.common.v1 import common_pb2
from protos.trip.v1 import events_pb2 as trip_events_pb2
from scripts import gen_protos

EXPECTED_SERVICES = {
    "rideshare.rider.v1.RiderService",
    "rideshare.driver.v1.DriverService",
    "rideshare.trip.v1.TripService",
    "rideshare.location.v1.LocationService",
    "rideshare.notification.v1.NotificationService",
}
MONEY_WORDS = ("fare", "price", "fee", "amount")


def _modules() -> list[ModuleType]:
    """Every generated ``*_pb2`` module, imported."""
    return [
        importlib.import_module(".".join(p.with_name(p.stem + "_pb2").parts))
        for p in gen_protos.find_protos()
    ]


def _files() -> list[descriptor.FileDescriptor]:
    return [m.DESCRIPTOR for m in _modules()]


def _messages() -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []
    pending = [m for f in _files() for m in f.message_types_by_name.values()]
    while pending:
        message = pending.pop()
        if message.GetOptions().map_entry:
            continue
        found.append(message)
        pending.extend(message.nested_types)
    return found


def _enums() -> list[descriptor.EnumDescriptor]:
    top = [e for f in _files() for e in f.enum_types_by_name.values()]
    return top + [e for m in _messages() for e in m.enum_types]


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, a trailing ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def test_generated_code_is_what_the_protos_generate() -> None:
    problems = gen_protos.check()
    assert not problems, "run `python -m scripts.gen_protos`:\n" + "\n".join(map(str, problems))


def test_every_area_has_its_generated_module_and_a_grpc_module_when_it_has_a_service() -> None:
    for module in _modules():
        if module.DESCRIPTOR.services_by_name:
            grpc_module = importlib.import_module(module.__name__ + "_grpc")
            for name in module.DESCRIPTOR.services_by_name:
                assert hasattr(grpc_module, f"{name}Stub")
                assert hasattr(grpc_module, f"{name}Servicer")
                assert hasattr(grpc_module, f"add_{name}Servicer_to_server")


def test_the_five_services_have_their_full_names() -> None:
    services = {s.full_name for f in _files() for s in f.services_by_name.values()}
    assert services == EXPECTED_SERVICES


def test_every_proto_package_is_rideshare_area_v1_matching_its_directory() -> None:
    for f in _files():
        _, area, version, _ = f.name.split("/")
        assert f.package == f"rideshare.{area}.{version}", f.name


def test_every_enum_starts_with_a_prefixed_unspecified_zero() -> None:
    for enum in _enums():
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        assert enum.values[0].number == 0, enum.full_name
        assert enum.values[0].name == prefix + "UNSPECIFIED", enum.full_name
        for value in enum.values:
            assert value.name.startswith(prefix), value.name


def test_money_is_never_a_float() -> None:
    money = common_pb2.Money.DESCRIPTOR
    assert money.fields_by_name["amount_minor"].type == descriptor.FieldDescriptor.TYPE_INT64
    for message in _messages():
        for field in message.fields:
            if any(word in field.name for word in MONEY_WORDS) and field.name != "amount_minor":
                assert field.message_type is money, f"{message.full_name}.{field.name}"


def test_no_field_name_is_a_python_keyword() -> None:
    for message in _messages():
        for field in message.fields:
            assert not keyword.iskeyword(field.name), f"{message.full_name}.{field.name}"


def test_times_are_timestamps_except_the_millisecond_hot_path() -> None:
    timestamp = timestamp_pb2.Timestamp.DESCRIPTOR
    for message in _messages():
        for field in message.fields:
            if field.name.endswith("_ms"):
                assert field.type == descriptor.FieldDescriptor.TYPE_INT64, field.full_name
            elif field.name.endswith("_at"):
                assert field.message_type is timestamp, field.full_name


def test_every_event_subject_maps_to_a_message_of_its_own_area() -> None:
    for subject, payload in events.EVENT_TYPES.items():
        area = subject.split(".")[0]
        assert payload.DESCRIPTOR.full_name.startswith(f"rideshare.{area}.v1."), subject
        assert payload.DESCRIPTOR.file.name == f"protos/{area}/v1/events.proto", subject


def test_every_event_message_has_a_subject() -> None:
    registered = {p.DESCRIPTOR.full_name for p in events.EVENT_TYPES.values()}
    declared = {
        m.full_name
        for f in _files()
        if f.name.endswith("/events.proto")
        for m in f.message_types_by_name.values()
    }
    assert declared == registered
    assert len(registered) == len(events.EVENT_TYPES), "one message per subject"


def test_every_event_subject_is_a_constant_and_captured_by_the_stream() -> None:
    constants = {
        value
        for name, value in vars(events).items()
        if name.isupper() and isinstance(value, str) and name != "STREAM"
    }
    for subject in events.EVENT_TYPES:
        assert subject in constants
        assert re.fullmatch(r"(rider|driver|trip)\.[a-z_]+", subject), subject
        assert any(_subject_matches(p, subject) for p in events.STREAM_SUBJECTS), subject


def test_live_subjects_are_outside_the_stream() -> None:
    for subject in (events.location_driver_subject("d1"), events.notify_user_subject("u1")):
        assert not any(_subject_matches(p, subject) for p in events.STREAM_SUBJECTS)


def test_live_subject_helpers_build_one_token_per_id() -> None:
    assert events.location_driver_subject("d-42") == "location.driver.d-42"
    assert events.notify_user_subject("u-7") == "notify.user.u-7"
    assert _subject_matches(events.LOCATION_DRIVER_WILDCARD, "location.driver.d-42")
    assert _subject_matches(events.NOTIFY_USER_WILDCARD, "notify.user.u-7")


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "a b"])
def test_live_subject_helpers_refuse_ids_that_would_address_other_subjects(bad: str) -> None:
    with pytest.raises(ValueError, match="NATS subject token"):
        events.location_driver_subject(bad)
    with pytest.raises(ValueError, match="NATS subject token"):
        events.notify_user_subject(bad)


def test_an_envelope_round_trips_its_payload_through_the_registry() -> None:
    accepted = trip_events_pb2.TripAccepted(trip_id="t1", rider_id="r1", driver_id="d1", eta_s=240)
    envelope = common_pb2.EventEnvelope(
        event_id="e1",
        aggregate_id="t1",
        aggregate_version=3,
        type=events.TRIP_ACCEPTED,
        payload=accepted.SerializeToString(),
    )
    envelope.occurred_at.FromSeconds(1_700_000_000)

    received = common_pb2.EventEnvelope.FromString(envelope.SerializeToString())
    decoded: Message = events.payload_type(received.type).FromString(received.payload)

    assert decoded == accepted


def test_an_unknown_subject_has_no_payload_type() -> None:
    with pytest.raises(KeyError, match=r"trip\.teleported"):
        events.payload_type("trip.teleported")
