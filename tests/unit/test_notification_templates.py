"""The table of templates against the events: every template renders from its event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notification.domain import DRIVER_FIELDS, UNKNOWN_DRIVER_FACTS, Channel, Notification, plan
from notification.events import CONSUMED_SUBJECTS
from notification.templates import TEMPLATES
from notification.wire import facts_of, notification_to_proto
from protos import events
from protos.common.v1 import common_pb2
from protos.notification.v1 import notification_pb2 as pb
from protos.rider.v1 import events_pb2 as rider_events
from protos.rider.v1 import rider_pb2

WHEN = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _payload_with_ids(subject: str) -> object:
    """The event's payload with every string id field filled in."""
    message = events.payload_type(subject)()
    for field in message.DESCRIPTOR.fields:
        if field.name.endswith("_id") and field.type == field.TYPE_STRING:
            setattr(message, field.name, f"{field.name}-1")
    return message


def test_every_templated_subject_is_an_event_on_the_stream() -> None:
    assert set(TEMPLATES) <= set(events.EVENT_TYPES)


def test_the_consumer_filters_on_event_subjects_only() -> None:
    assert set(CONSUMED_SUBJECTS) <= set(events.EVENT_TYPES)
    assert set(TEMPLATES) <= set(CONSUMED_SUBJECTS)
    assert events.DRIVER_ONLINE in CONSUMED_SUBJECTS  # the driver read model


@pytest.mark.parametrize("subject", sorted(TEMPLATES))
def test_every_template_renders_from_its_event(subject: str) -> None:
    facts = facts_of(subject, _payload_with_ids(subject))  # type: ignore[arg-type]
    facts |= UNKNOWN_DRIVER_FACTS

    for template in TEMPLATES[subject]:
        missing = template.fields() - set(facts) - set(template.when)
        assert not missing, f"{template.kind} needs {missing}"
        conditions = {**facts, **template.when}
        assert template.recipient in facts
        title = template.title.format_map(conditions)
        body = template.body.format_map(conditions)
        assert title and body and "{" not in body


def test_driver_facts_are_only_read_by_events_that_name_a_driver() -> None:
    for subject, templates in TEMPLATES.items():
        if any(DRIVER_FIELDS & t.fields() for t in templates):
            assert "driver_id" in facts_of(subject, _payload_with_ids(subject))  # type: ignore[arg-type]


def test_every_notification_is_in_app_so_the_app_can_list_it_live() -> None:
    for templates in TEMPLATES.values():
        for template in templates:
            assert Channel.IN_APP in template.channels, template.kind


def test_a_notification_goes_on_the_wire_with_its_channels_data_and_times() -> None:
    notification = Notification(
        id="5f0c3a51-0d7e-4b0e-9a53-6f7d2b1c9e11",
        user_id="r1",
        kind="trip.completed",
        title="Trip completed",
        body="You paid 12.50 EUR",
        data={"fare_minor": "1250"},
        trip_id="t1",
        channels=(Channel.IN_APP, Channel.PUSH),
        event_id="e1",
        created_at=WHEN,
    )

    wire = notification_to_proto(notification)

    assert list(wire.channels) == [pb.CHANNEL_IN_APP, pb.CHANNEL_PUSH]
    assert dict(wire.data) == {"fare_minor": "1250"}
    assert wire.created_at.ToDatetime(tzinfo=UTC) == WHEN
    assert not wire.HasField("read_at")
    assert pb.Notification.FromString(wire.SerializeToString()) == wire


def test_a_receipt_names_the_amount_the_trip_and_the_cards_last_four() -> None:
    paid = rider_events.PaymentSucceeded(
        payment_id="p-1",
        rider_id="r-1",
        trip_id="t-1",
        kind=rider_pb2.PAYMENT_KIND_FARE,
        amount=common_pb2.Money(amount_minor=1725, currency="EUR"),
        card_last4="4242",
    )
    facts = facts_of(events.RIDER_PAYMENT_SUCCEEDED, paid)
    [receipt] = plan(
        TEMPLATES[events.RIDER_PAYMENT_SUCCEEDED], facts, event_id="e-1", created_at=WHEN
    )
    assert (receipt.user_id, receipt.kind, receipt.trip_id) == ("r-1", "payment.receipt", "t-1")
    assert "4242" in receipt.body and "17.25" in receipt.body
    assert receipt.data["card_last4"] == "4242"
    assert receipt.data["amount_minor"] == "1725"
