"""Domain values <-> protobuf messages for the notification service: its API's messages,
and the facts templates read out of the event payloads it consumes.

No I/O; used by ``server`` (requests and responses), ``feed`` (the in-app message) and
``events`` (payloads -> facts and read models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from google.protobuf.message import Message

from notification.domain import (
    Channel,
    DriverVehicle,
    InvalidArgumentError,
    Notification,
    eta_minutes,
    format_distance,
    format_money,
)
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import events_pb2 as rider_events
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import ids

__all__ = [
    "Facts",
    "channel_to_proto",
    "driver_vehicle_of",
    "facts_of",
    "list_response",
    "notification_to_proto",
    "user_id_of",
    "vehicle_class_from_proto",
]

Facts = dict[str, str]

_CHANNEL: Final[Mapping[Channel, notification_pb2.Channel.ValueType]] = {
    Channel.IN_APP: notification_pb2.CHANNEL_IN_APP,
    Channel.PUSH: notification_pb2.CHANNEL_PUSH,
    Channel.SMS: notification_pb2.CHANNEL_SMS,
}


def channel_to_proto(channel: Channel) -> notification_pb2.Channel.ValueType:
    return _CHANNEL[channel]


def vehicle_class_from_proto(value: common_pb2.VehicleClass.ValueType) -> int:
    """The read model keeps vehicle classes as the wire enum's numbers."""
    return int(value)


# -- the API -------------------------------------------------------------------------------


def user_id_of(user_id: str) -> str:
    """A request's user id; InvalidArgumentError when it is empty or not an id
    (rideshare.ids): it names the user's live subject (``notify.user.<user_id>``)."""
    try:
        return ids.check_id(user_id, "user_id")
    except ids.InvalidIdError as exc:
        raise InvalidArgumentError(str(exc)) from None


def notification_to_proto(notification: Notification) -> notification_pb2.Notification:
    """The wire form of a notification."""
    message = notification_pb2.Notification(
        id=notification.id,
        user_id=notification.user_id,
        kind=notification.kind,
        title=notification.title,
        body=notification.body,
        data=dict(notification.data),
        trip_id=notification.trip_id,
        channels=[channel_to_proto(c) for c in notification.channels],
        event_id=notification.event_id,
    )
    message.created_at.FromDatetime(notification.created_at)
    if notification.read_at is not None:
        message.read_at.FromDatetime(notification.read_at)
    return message


def list_response(
    page: Sequence[Notification], *, next_page_token: str
) -> notification_pb2.ListNotificationsResponse:
    return notification_pb2.ListNotificationsResponse(
        notifications=[notification_to_proto(n) for n in page], next_page_token=next_page_token
    )


# -- read models -----------------------------------------------------------------------------


def driver_vehicle_of(event: driver_events.DriverWentOnline) -> DriverVehicle:
    """What riders are told about the driver who went online."""
    return DriverVehicle(
        driver_id=event.driver_id,
        driver_name=event.driver_name,
        make=event.vehicle_make,
        model=event.vehicle_model,
        plate=event.vehicle_plate,
    )


# -- facts: event payload -> the strings templates use ---------------------------------------


def _money(money: common_pb2.Money) -> str:
    return format_money(money.amount_minor, money.currency) if money.currency else "-"


def _place(address: str, point: common_pb2.LatLng) -> str:
    return address or f"{point.lat:.5f}, {point.lng:.5f}"


def _offered(e: trip_events.TripOffered) -> Facts:
    return {
        "trip_id": e.trip_id,
        "driver_id": e.driver_id,
        "rider_id": e.rider_id,
        "offer_id": e.offer_id,
        "expires_at": e.expires_at.ToJsonString() if e.HasField("expires_at") else "",
        "fare": _money(e.fare),
        "pickup": _place(e.pickup_address, e.pickup),
        "distance_to_pickup": format_distance(e.distance_to_pickup_m),
        "distance_to_pickup_m": str(round(e.distance_to_pickup_m)),
    }


def _accepted(e: trip_events.TripAccepted) -> Facts:
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "eta_s": str(e.eta_s),
        "eta_min": str(eta_minutes(e.eta_s)),
    }


def _arrived(e: trip_events.TripArrived) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id, "driver_id": e.driver_id}


def _started(e: trip_events.TripStarted) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id, "driver_id": e.driver_id}


def _completed(e: trip_events.TripCompleted) -> Facts:
    # Events from before completed_by existed were all the driver's.
    by_service = e.completed_by in (trip_pb2.ACTOR_SYSTEM, trip_pb2.ACTOR_ADMIN)
    return {
        "completed_by": "service" if by_service else "driver",
        "reason": e.reason,
        "charge_basis": trip_pb2.ChargeBasis.Name(e.charge_basis)
        .removeprefix("CHARGE_BASIS_")
        .lower(),
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "fare": _money(e.fare),
        "fare_minor": str(e.fare.amount_minor),
        "currency": e.fare.currency,
        "distance": format_distance(e.distance_m),
        "distance_m": str(e.distance_m),
        "duration_min": str(eta_minutes(e.duration_s)),
        "duration_s": str(e.duration_s),
    }


def _no_drivers(e: trip_events.TripNoDrivers) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id}


# What each side is told when the system took the trip from its driver (the trip's clock ran
# out, trip/liveness.py): (rider, driver).
_REPLACED: Final[Mapping[int, tuple[str, str]]] = {
    trip_events.LIVENESS_RULE_DRIVER_SILENT: (
        "We lost contact with your driver.",
        "We had no location from your app for too long.",
    ),
    trip_events.LIVENESS_RULE_PICKUP_TOO_LONG: (
        "Your driver was taking too long to reach you.",
        "You did not reach the pickup in time.",
    ),
}
_REPLACED_OTHERWISE: Final = ("Your driver could not continue.", "We had to take the trip back.")


def _driver_cancelled(e: trip_events.TripDriverCancelled) -> Facts:
    rider_text, driver_text = _REPLACED.get(e.liveness_rule, _REPLACED_OTHERWISE)
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "reason": e.reason,
        # A driver's own cancel (or going offline) vs the system taking the trip from them.
        "released_by": "driver" if not e.liveness_rule else "service",
        "rider_text": rider_text,
        "driver_text": driver_text,
    }


_CANCELLED_BY = {
    trip_pb2.ACTOR_RIDER: "rider",
    trip_pb2.ACTOR_DRIVER: "driver",
    trip_pb2.ACTOR_SYSTEM: "service",
    trip_pb2.ACTOR_ADMIN: "service",
}


def _cancelled(e: trip_events.TripCancelled) -> Facts:
    fee = e.fee if e.HasField("fee") and e.fee.amount_minor else None
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "cancelled_by": _CANCELLED_BY.get(e.cancelled_by, ""),
        "reason": e.reason,
        "fee_text": f"A fee of {_money(fee)} was charged." if fee else "You were not charged.",
    }


def _rated(e: trip_events.TripRated) -> Facts:
    return {"trip_id": e.trip_id, "ratee_id": e.ratee_id, "stars": str(e.stars)}


def _rider_created(e: rider_events.RiderCreated) -> Facts:
    return {"rider_id": e.rider_id, "name": e.name}


_PAID_FOR: Final[Mapping[int, tuple[str, str]]] = {
    rider_pb2.PAYMENT_KIND_FARE: ("fare", "trip"),
    rider_pb2.PAYMENT_KIND_CANCELLATION_FEE: ("cancellation_fee", "cancelled trip's fee"),
}


def _payment(e: rider_events.PaymentSucceeded | rider_events.PaymentFailed) -> Facts:
    kind, what = _PAID_FOR.get(e.kind, ("", "trip"))
    return {
        "payment_id": e.payment_id,
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "kind": kind,
        "what": what,
        "amount": _money(e.amount),
        "amount_minor": str(e.amount.amount_minor),
        "currency": e.amount.currency,
        "card_last4": e.card_last4 or "----",
    }


def _payment_failed(e: rider_events.PaymentFailed) -> Facts:
    return {**_payment(e), "reason": e.reason}


def _refunded(e: rider_events.PaymentRefunded) -> Facts:
    return {
        "payment_id": e.payment_id,
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "amount": _money(e.amount),
        "amount_minor": str(e.amount.amount_minor),
        "currency": e.amount.currency,
    }


def _driver_created(e: driver_events.DriverCreated) -> Facts:
    return {"driver_id": e.driver_id, "name": e.name}


_FACTS: Final[Mapping[str, Callable[[Any], Facts]]] = {
    events.TRIP_OFFERED: _offered,
    events.TRIP_ACCEPTED: _accepted,
    events.TRIP_ARRIVED: _arrived,
    events.TRIP_STARTED: _started,
    events.TRIP_COMPLETED: _completed,
    events.TRIP_NO_DRIVERS: _no_drivers,
    events.TRIP_DRIVER_CANCELLED: _driver_cancelled,
    events.TRIP_CANCELLED: _cancelled,
    events.TRIP_RATED: _rated,
    events.RIDER_CREATED: _rider_created,
    events.RIDER_PAYMENT_SUCCEEDED: _payment,
    events.RIDER_PAYMENT_FAILED: _payment_failed,
    events.RIDER_PAYMENT_REFUNDED: _refunded,
    events.DRIVER_CREATED: _driver_created,
}


def facts_of(subject: str, message: Message) -> Facts:
    """The template facts of one event payload (KeyError for a subject with no templates)."""
    return _FACTS[subject](message)
