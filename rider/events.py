"""What the rider service publishes (rider.*) and consumes (trip.*: history and ratings)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg

from protos import events
from protos.rider.v1 import events_pb2 as rider_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rider.domain import Rider, TripUpdate
from rideshare.bus import Envelope

if TYPE_CHECKING:
    from rider.store import RiderStore

__all__ = ["CONSUMED_SUBJECTS", "DURABLE", "TripHistoryConsumer", "rider_created", "rider_updated"]

logger = logging.getLogger(__name__)

# One durable for all copies of the service: they share the work.
DURABLE = "rider"


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def rider_created(rider: Rider) -> rider_events.RiderCreated:
    """The rider.created payload for a new rider."""
    return rider_events.RiderCreated(
        rider_id=rider.id,
        name=rider.name,
        phone=rider.phone,
        email=rider.email,
        created_at=_timestamp(rider.created_at),
    )


def rider_updated(rider: Rider) -> rider_events.RiderUpdated:
    """The rider.updated payload: the full profile after the change."""
    return rider_events.RiderUpdated(
        rider_id=rider.id,
        name=rider.name,
        email=rider.email,
        updated_at=_timestamp(rider.updated_at),
    )


# -- trip.* -> read model ----------------------------------------------------------------------


def _when(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def _point(message: Any, field: str) -> tuple[float, float] | None:
    if not message.HasField(field):
        return None
    point = getattr(message, field)
    return (point.lat, point.lng)


def _update(envelope: Envelope, message: Any, state: int, **fields: Any) -> TripUpdate:
    return TripUpdate(
        trip_id=message.trip_id,
        rider_id=message.rider_id,
        version=envelope.aggregate_version,
        state=state,
        occurred_at=envelope.occurred_at,
        **fields,
    )


def _requested(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripRequested)
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_REQUESTED,
        pickup=_point(m, "pickup"),
        dropoff=_point(m, "dropoff"),
        fare_minor=m.fare.amount_minor if m.HasField("fare") else None,
        fare_currency=m.fare.currency if m.HasField("fare") else None,
        vehicle_class=m.vehicle_class,
        requested_at=_when(m, "requested_at"),
    )


def _offered(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripOffered)
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_DISPATCHING,
        pickup=_point(m, "pickup"),
        dropoff=_point(m, "dropoff"),
        vehicle_class=m.vehicle_class,
    )


def _accepted(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripAccepted)
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_ACCEPTED,
        driver_id=m.driver_id,
        pickup=_point(m, "pickup"),
        vehicle_class=m.vehicle_class,
    )


def _driver_cancelled(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripDriverCancelled)
    # The trip goes back to dispatching without this driver.
    return _update(envelope, m, trip_pb2.TRIP_STATE_DISPATCHING, driver_id="")


def _arrived(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripArrived)
    return _update(
        envelope, m, trip_pb2.TRIP_STATE_ARRIVED, driver_id=m.driver_id, pickup=_point(m, "pickup")
    )


def _started(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripStarted)
    return _update(envelope, m, trip_pb2.TRIP_STATE_IN_PROGRESS, driver_id=m.driver_id)


def _completed(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripCompleted)
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_COMPLETED,
        driver_id=m.driver_id,
        pickup=_point(m, "pickup"),
        dropoff=_point(m, "dropoff"),
        fare_minor=m.fare.amount_minor,
        fare_currency=m.fare.currency or None,
        vehicle_class=m.vehicle_class,
        requested_at=_when(m, "requested_at"),
        completed_at=_when(m, "completed_at") or envelope.occurred_at,
    )


def _cancelled(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripCancelled)
    has_fee = m.HasField("fee")
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_CANCELLED,
        pickup=_point(m, "pickup"),
        dropoff=_point(m, "dropoff"),
        # What a cancelled trip cost is its fee: nothing when none was charged.
        fare_minor=m.fee.amount_minor if has_fee else 0,
        fare_currency=(m.fee.currency or None) if has_fee else None,
        requested_at=_when(m, "requested_at"),
        ended_at=_when(m, "cancelled_at") or envelope.occurred_at,
    )


def _no_drivers(envelope: Envelope) -> TripUpdate:
    m = envelope.unpack(trip_events.TripNoDrivers)
    return _update(
        envelope,
        m,
        trip_pb2.TRIP_STATE_NO_DRIVERS,
        pickup=_point(m, "pickup"),
        dropoff=_point(m, "dropoff"),
        requested_at=_when(m, "requested_at"),
        ended_at=_when(m, "ended_at") or envelope.occurred_at,
    )


_TRIP_UPDATES: dict[str, Callable[[Envelope], TripUpdate]] = {
    events.TRIP_REQUESTED: _requested,
    events.TRIP_OFFERED: _offered,
    events.TRIP_ACCEPTED: _accepted,
    events.TRIP_DRIVER_CANCELLED: _driver_cancelled,
    events.TRIP_ARRIVED: _arrived,
    events.TRIP_STARTED: _started,
    events.TRIP_COMPLETED: _completed,
    events.TRIP_CANCELLED: _cancelled,
    events.TRIP_NO_DRIVERS: _no_drivers,
}

CONSUMED_SUBJECTS = (*_TRIP_UPDATES, events.TRIP_RATED)


class TripHistoryConsumer:
    """Keeps the trip history and the riders' ratings from trip.* events, once per event."""

    def __init__(self, store: RiderStore, *, consumer: str = DURABLE) -> None:
        self._store = store
        self._consumer = consumer

    async def handle(self, envelope: Envelope, _msg: Msg | None = None) -> None:
        """Apply one event; a redelivered one (same event id) changes nothing."""
        if envelope.type == events.TRIP_RATED:
            await self._rated(envelope)
            return
        convert = _TRIP_UPDATES.get(envelope.type)
        if convert is None:
            return
        update = convert(envelope)
        if not update.trip_id or not update.rider_id:
            logger.warning(
                "ignoring %s %s without trip or rider id", envelope.type, envelope.event_id
            )
            return
        await self._store.apply_trip(update, consumer=self._consumer, event_id=envelope.event_id)

    async def _rated(self, envelope: Envelope) -> None:
        rated = envelope.unpack(trip_events.TripRated)
        if rated.rater != trip_pb2.ACTOR_DRIVER:
            return  # a rider rating a driver: the driver service's business
        if not 1 <= rated.stars <= 5 or not rated.ratee_id:
            logger.warning("ignoring invalid rating in event %s", envelope.event_id)
            return
        await self._store.apply_rating(
            trip_id=rated.trip_id,
            rider_id=rated.ratee_id,
            stars=rated.stars,
            rated_at=envelope.occurred_at,
            consumer=self._consumer,
            event_id=envelope.event_id,
        )
