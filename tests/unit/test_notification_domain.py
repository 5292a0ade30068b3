"""The notification service's pure rules: rendering, page tokens, retry schedule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from notification.domain import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Channel,
    Delivery,
    DeliveryOutcome,
    DriverVehicle,
    InvalidArgumentError,
    PageCursor,
    Template,
    decode_page_token,
    encode_page_token,
    eta_minutes,
    format_distance,
    format_money,
    page_size,
    parse_notification_ids,
    plan,
    render,
    retry_delay_s,
)

WHEN = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

ASSIGNED = Template(
    recipient="rider_id",
    kind="trip.driver_assigned",
    title="Your driver is on the way",
    body="{driver_name} in a {vehicle} ({plate}), {eta_min} min",
    channels=(Channel.IN_APP, Channel.PUSH),
    data=("plate", "eta_s"),
)

FACTS = {
    "rider_id": "r1",
    "driver_id": "d1",
    "trip_id": "t1",
    "driver_name": "Dana",
    "vehicle": "Toyota Prius",
    "plate": "B-RS-123",
    "eta_min": "4",
    "eta_s": "240",
}


def test_a_template_renders_the_facts_into_a_notification_for_the_recipient() -> None:
    notification = render(ASSIGNED, FACTS, event_id="e1", created_at=WHEN)

    assert notification is not None
    assert notification.user_id == "r1"
    assert notification.kind == "trip.driver_assigned"
    assert notification.body == "Dana in a Toyota Prius (B-RS-123), 4 min"
    assert notification.data == {"plate": "B-RS-123", "eta_s": "240"}
    assert notification.trip_id == "t1"
    assert notification.channels == (Channel.IN_APP, Channel.PUSH)
    assert (notification.event_id, notification.created_at) == ("e1", WHEN)
    assert notification.read_at is None
    uuid.UUID(notification.id)


def test_a_template_without_its_recipient_renders_nothing() -> None:
    assert render(ASSIGNED, {**FACTS, "rider_id": ""}, event_id="e1", created_at=WHEN) is None


def test_a_template_whose_condition_fails_renders_nothing() -> None:
    only_by_rider = Template(
        recipient="driver_id",
        kind="trip.rider_cancelled",
        title="t",
        body="b",
        channels=(Channel.IN_APP,),
        when={"cancelled_by": "rider"},
    )
    by_rider = {**FACTS, "cancelled_by": "rider"}
    by_driver = {**FACTS, "cancelled_by": "driver"}

    assert render(only_by_rider, by_rider, event_id="e", created_at=WHEN) is not None
    assert render(only_by_rider, by_driver, event_id="e", created_at=WHEN) is None


def test_a_missing_fact_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        render(ASSIGNED, {"rider_id": "r1"}, event_id="e1", created_at=WHEN)


def test_plan_tells_each_person_at_most_once_per_event() -> None:
    second = Template(
        recipient="rider_id", kind="other", title="t", body="b", channels=(Channel.IN_APP,)
    )
    to_driver = Template(
        recipient="driver_id", kind="x", title="t", body="b", channels=(Channel.IN_APP,)
    )

    planned = plan([ASSIGNED, second, to_driver], FACTS, event_id="e1", created_at=WHEN)

    assert [(n.user_id, n.kind) for n in planned] == [("r1", "trip.driver_assigned"), ("d1", "x")]


def test_template_fields_lists_every_fact_it_reads() -> None:
    assert ASSIGNED.fields() == {
        "rider_id",
        "driver_name",
        "vehicle",
        "plate",
        "eta_min",
        "eta_s",
    }


def test_driver_vehicle_facts_name_the_car() -> None:
    vehicle = DriverVehicle("d1", "Dana", "Toyota", "Prius", "B-RS-123")

    assert vehicle.facts() == {
        "driver_name": "Dana",
        "vehicle": "Toyota Prius",
        "plate": "B-RS-123",
    }


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [(1250, "EUR", "12.50 EUR"), (5, "USD", "0.05 USD"), (0, "EUR", "0.00 EUR")],
)
def test_money_is_shown_with_two_minor_digits(amount: int, currency: str, text: str) -> None:
    assert format_money(amount, currency) == text


def test_eta_and_distance_are_rounded_for_people() -> None:
    assert [eta_minutes(s) for s in (0, 29, 90, 240)] == [1, 1, 2, 4]
    assert [format_distance(m) for m in (850, 999.6, 5400)] == ["850 m", "1000 m", "5.4 km"]


def test_retries_wait_twice_as_long_each_time_up_to_the_cap() -> None:
    delays = [retry_delay_s(attempt, base_s=1.0, cap_s=10.0) for attempt in range(1, 7)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry_delay_s(1000, base_s=1.0, cap_s=10.0) == 10.0
    with pytest.raises(ValueError):
        retry_delay_s(0, base_s=1.0, cap_s=10.0)


def test_delivery_outcome_names_its_result() -> None:
    delivery = Delivery(1, 1, Channel.PUSH, "n", "u", "", "k", "t", "b", {}, "")

    assert DeliveryOutcome(delivery, "log", "u", None, None).result == "sent"
    assert DeliveryOutcome(delivery, "log", "u", "down", 2.0).result == "retry"
    assert DeliveryOutcome(delivery, "log", "u", "no phone", None).result == "failed"


def test_page_size_defaults_clamps_and_rejects_negative() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgumentError):
        page_size(-1)


def test_a_page_token_round_trips_for_the_same_user_and_filter() -> None:
    cursor = PageCursor("r1", True, 1_777_000_000_123_456, str(uuid.uuid4()))

    token = encode_page_token(cursor)

    assert decode_page_token(token, user_id="r1", unread_only=True) == cursor


@pytest.mark.parametrize(
    ("user_id", "unread_only"), [("r2", True), ("r1", False)], ids=["other user", "other filter"]
)
def test_a_page_token_is_refused_for_another_user_or_filter(
    user_id: str, unread_only: bool
) -> None:
    token = encode_page_token(PageCursor("r1", True, 1, str(uuid.uuid4())))

    with pytest.raises(InvalidArgumentError):
        decode_page_token(token, user_id=user_id, unread_only=unread_only)


@pytest.mark.parametrize(
    "token",
    ["junk", "", "W10", encode_page_token(PageCursor("r1", False, 1, str(uuid.uuid4())))[:-3]],
)
def test_a_malformed_page_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgumentError):
        decode_page_token(token, user_id="r1", unread_only=False)


def test_only_well_formed_notification_ids_are_kept() -> None:
    good = uuid.uuid4()

    assert parse_notification_ids([str(good).upper(), "junk", ""]) == [str(good)]


def test_channels_are_stored_by_label_and_sent_by_number() -> None:
    assert [(c.label, int(c)) for c in Channel] == [("in_app", 1), ("push", 2), ("sms", 3)]
    assert Channel.from_label("sms") is Channel.SMS
    with pytest.raises(ValueError):
        Channel.from_label("fax")
