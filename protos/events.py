"""Every NATS name in the system: the stream, its subjects, live subjects and headers.

The one place that says which protobuf message travels on which subject. Producers and
consumers import the constants from here and never spell a subject as a literal.

Durable events (JetStream stream ``RIDESHARE``) are ``<service>.<event_in_past_tense>``; each
is a ``rideshare.common.v1.EventEnvelope`` whose ``type`` is the subject and whose ``payload``
is the message in ``EVENT_TYPES[subject]``. Live data travels on core NATS without an
envelope: ``location.driver.<driver_id>`` carries a bare
``rideshare.location.v1.DriverPosition`` and ``notify.user.<user_id>`` a bare
``rideshare.notification.v1.Notification``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from google.protobuf.message import Message

from protos.driver.v1 import events_pb2 as driver_events_pb2
from protos.location.v1 import location_pb2
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import events_pb2 as rider_events_pb2
from protos.trip.v1 import events_pb2 as trip_events_pb2

__all__ = [
    "DRIVER_CREATED",
    "DRIVER_OFFLINE",
    "DRIVER_ONLINE",
    "DRIVER_VEHICLE_ADDED",
    "EVENT_TYPES",
    "LIVE_TYPES",
    "LOCATION_DRIVER_PREFIX",
    "LOCATION_DRIVER_WILDCARD",
    "MSG_ID_HEADER",
    "NOTIFY_USER_PREFIX",
    "NOTIFY_USER_WILDCARD",
    "RIDER_CREATED",
    "RIDER_PAYMENT_FAILED",
    "RIDER_PAYMENT_REFUNDED",
    "RIDER_PAYMENT_SUCCEEDED",
    "RIDER_UPDATED",
    "STREAM",
    "STREAM_SUBJECTS",
    "TRIP_ACCEPTED",
    "TRIP_ARRIVED",
    "TRIP_CANCELLED",
    "TRIP_COMPLETED",
    "TRIP_DRIVER_CANCELLED",
    "TRIP_FLAGGED",
    "TRIP_NO_DRIVERS",
    "TRIP_OFFERED",
    "TRIP_OFFER_ENDED",
    "TRIP_RATED",
    "TRIP_REQUESTED",
    "TRIP_STARTED",
    "location_driver_subject",
    "notify_user_subject",
    "payload_type",
]

# JetStream
STREAM: Final = "RIDESHARE"
# deadletter.<durable>: poison messages a consumer gave up on (rideshare.bus), kept for
# inspection in the same stream; no consumer of domain events filters on them.
STREAM_SUBJECTS: Final = ("trip.>", "driver.>", "rider.>", "deadletter.>")
# Set to the envelope's event_id on every publish, so JetStream drops duplicates.
MSG_ID_HEADER: Final = "Nats-Msg-Id"

# rider.*
RIDER_CREATED: Final = "rider.created"
RIDER_UPDATED: Final = "rider.updated"
# Payment outcomes: the envelope's aggregate_id is the payment id (not the rider's).
RIDER_PAYMENT_SUCCEEDED: Final = "rider.payment_succeeded"
RIDER_PAYMENT_FAILED: Final = "rider.payment_failed"
RIDER_PAYMENT_REFUNDED: Final = "rider.payment_refunded"

# driver.*
DRIVER_CREATED: Final = "driver.created"
DRIVER_VEHICLE_ADDED: Final = "driver.vehicle_added"
DRIVER_ONLINE: Final = "driver.online"
DRIVER_OFFLINE: Final = "driver.offline"

# trip.*
TRIP_REQUESTED: Final = "trip.requested"
TRIP_OFFERED: Final = "trip.offered"
TRIP_OFFER_ENDED: Final = "trip.offer_ended"
TRIP_ACCEPTED: Final = "trip.accepted"
TRIP_DRIVER_CANCELLED: Final = "trip.driver_cancelled"
TRIP_ARRIVED: Final = "trip.arrived"
TRIP_STARTED: Final = "trip.started"
TRIP_COMPLETED: Final = "trip.completed"
TRIP_CANCELLED: Final = "trip.cancelled"
TRIP_NO_DRIVERS: Final = "trip.no_drivers"
TRIP_RATED: Final = "trip.rated"
TRIP_FLAGGED: Final = "trip.flagged"

EVENT_TYPES: Final[Mapping[str, type[Message]]] = MappingProxyType(
    {
        RIDER_CREATED: rider_events_pb2.RiderCreated,
        RIDER_UPDATED: rider_events_pb2.RiderUpdated,
        RIDER_PAYMENT_SUCCEEDED: rider_events_pb2.PaymentSucceeded,
        RIDER_PAYMENT_FAILED: rider_events_pb2.PaymentFailed,
        RIDER_PAYMENT_REFUNDED: rider_events_pb2.PaymentRefunded,
        DRIVER_CREATED: driver_events_pb2.DriverCreated,
        DRIVER_VEHICLE_ADDED: driver_events_pb2.VehicleAdded,
        DRIVER_ONLINE: driver_events_pb2.DriverWentOnline,
        DRIVER_OFFLINE: driver_events_pb2.DriverWentOffline,
        TRIP_REQUESTED: trip_events_pb2.TripRequested,
        TRIP_OFFERED: trip_events_pb2.TripOffered,
        TRIP_OFFER_ENDED: trip_events_pb2.TripOfferEnded,
        TRIP_ACCEPTED: trip_events_pb2.TripAccepted,
        TRIP_DRIVER_CANCELLED: trip_events_pb2.TripDriverCancelled,
        TRIP_ARRIVED: trip_events_pb2.TripArrived,
        TRIP_STARTED: trip_events_pb2.TripStarted,
        TRIP_COMPLETED: trip_events_pb2.TripCompleted,
        TRIP_CANCELLED: trip_events_pb2.TripCancelled,
        TRIP_NO_DRIVERS: trip_events_pb2.TripNoDrivers,
        TRIP_RATED: trip_events_pb2.TripRated,
        TRIP_FLAGGED: trip_events_pb2.TripFlagged,
    }
)
"""Subject -> payload message class of every durable event on the stream."""

# Core NATS live subjects: <prefix>.<id>; subscribe to the wildcard to see every id.
LOCATION_DRIVER_PREFIX: Final = "location.driver"
LOCATION_DRIVER_WILDCARD: Final = "location.driver.*"
NOTIFY_USER_PREFIX: Final = "notify.user"
NOTIFY_USER_WILDCARD: Final = "notify.user.*"

LIVE_TYPES: Final[Mapping[str, type[Message]]] = MappingProxyType(
    {
        LOCATION_DRIVER_PREFIX: location_pb2.DriverPosition,  # DriverPositionChanged
        NOTIFY_USER_PREFIX: notification_pb2.Notification,
    }
)
"""Live subject prefix -> message class carried bare (no envelope) on its subjects."""

# Characters that would change a subject's meaning if an id contained them.
_FORBIDDEN_IN_TOKEN: Final = frozenset(".*> \t\r\n")


def _token(kind: str, value: str) -> str:
    if not value or any(c in _FORBIDDEN_IN_TOKEN for c in value):
        raise ValueError(f"{kind} {value!r} cannot be a NATS subject token")
    return value


def location_driver_subject(driver_id: str) -> str:
    """Core NATS subject of a driver's live positions: ``location.driver.<driver_id>``.

    Raises ``ValueError`` for an id that is empty or contains ``.``, ``*``, ``>`` or
    whitespace, which would address other subjects.
    """
    return f"{LOCATION_DRIVER_PREFIX}.{_token('driver_id', driver_id)}"


def notify_user_subject(user_id: str) -> str:
    """Core NATS subject of a user's live notifications: ``notify.user.<user_id>``.

    Raises ``ValueError`` like ``location_driver_subject``.
    """
    return f"{NOTIFY_USER_PREFIX}.{_token('user_id', user_id)}"


def payload_type(subject: str) -> type[Message]:
    """The payload message class of a durable event subject; ``KeyError`` if unknown."""
    try:
        return EVENT_TYPES[subject]
    except KeyError:
        raise KeyError(f"no event type registered for subject {subject!r}") from None
