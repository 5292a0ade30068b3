"""What the driver service publishes (driver.*) and consumes (trip.*: holds and ratings)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from driver.domain import Driver, Vehicle
from protos import events
from protos.driver.v1 import events_pb2 as driver_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare.bus import Envelope

if TYPE_CHECKING:
    from driver.store import DriverStore

__all__ = [
    "CONSUMED_SUBJECTS",
    "DURABLE",
    "TripStatusConsumer",
    "driver_created",
    "driver_offline",
    "driver_online",
    "vehicle_added",
]

logger = logging.getLogger(__name__)

# One durable for all copies of the service: they share the work.
DURABLE = "driver"

# trip.accepted puts the driver on the trip; these free them again.
_RELEASES = (events.TRIP_COMPLETED, events.TRIP_CANCELLED, events.TRIP_DRIVER_CANCELLED)
CONSUMED_SUBJECTS = (events.TRIP_ACCEPTED, *_RELEASES, events.TRIP_RATED)


def driver_created(driver: Driver) -> driver_events.DriverCreated:
    """The driver.created payload."""
    message = driver_events.DriverCreated(driver_id=driver.id, name=driver.name, phone=driver.phone)
    message.created_at.FromDatetime(driver.created_at)
    return message


def vehicle_added(vehicle: Vehicle) -> driver_events.VehicleAdded:
    """The driver.vehicle_added payload."""
    return driver_events.VehicleAdded(
        driver_id=vehicle.driver_id,
        vehicle_id=vehicle.id,
        make=vehicle.make,
        model=vehicle.model,
        plate=vehicle.plate,
        seats=vehicle.seats,
        vehicle_class=int(vehicle.vehicle_class),  # type: ignore[arg-type]
    )


def driver_online(driver: Driver, vehicle: Vehicle) -> driver_events.DriverWentOnline:
    """The driver.online payload: who, and the car a rider is told about."""
    return driver_events.DriverWentOnline(
        driver_id=driver.id,
        vehicle_id=vehicle.id,
        vehicle_class=int(vehicle.vehicle_class),  # type: ignore[arg-type]
        driver_name=driver.name,
        vehicle_make=vehicle.make,
        vehicle_model=vehicle.model,
        vehicle_plate=vehicle.plate,
    )


def driver_offline(driver_id: str) -> driver_events.DriverWentOffline:
    """The driver.offline payload."""
    return driver_events.DriverWentOffline(driver_id=driver_id)


class TripStatusConsumer:
    """Keeps the drivers' on-trip status and ratings from trip.* events, once per event."""

    def __init__(self, store: DriverStore, *, consumer: str = DURABLE) -> None:
        self._store = store
        self._consumer = consumer

    async def handle(self, envelope: Envelope, _msg: Msg | None = None) -> None:
        """Apply one event; a redelivered one (same event id) changes nothing."""
        if envelope.type == events.TRIP_RATED:
            await self._rated(envelope)
            return
        if envelope.type != events.TRIP_ACCEPTED and envelope.type not in _RELEASES:
            return
        payload = envelope.unpack(events.payload_type(envelope.type))
        driver_id = str(getattr(payload, "driver_id", ""))
        trip_id = str(getattr(payload, "trip_id", ""))
        if not driver_id or not trip_id:
            return  # e.g. a trip cancelled before any driver was involved
        await self._store.apply_trip_hold(
            driver_id=driver_id,
            trip_id=trip_id,
            trip_version=envelope.aggregate_version,
            live=envelope.type == events.TRIP_ACCEPTED,
            consumer=self._consumer,
            event_id=envelope.event_id,
        )

    async def _rated(self, envelope: Envelope) -> None:
        rated = envelope.unpack(trip_events.TripRated)
        if rated.rater != trip_pb2.ACTOR_RIDER:
            return  # a driver rating a rider: the rider service's business
        if not 1 <= rated.stars <= 5 or not rated.ratee_id:
            logger.warning("ignoring invalid rating in event %s", envelope.event_id)
            return
        await self._store.apply_rating(
            trip_id=rated.trip_id,
            driver_id=rated.ratee_id,
            stars=rated.stars,
            rated_at=envelope.occurred_at,
            consumer=self._consumer,
            event_id=envelope.event_id,
        )
