"""What the location service consumes: driver and trip events, applied to the availability
index. (What it publishes, live positions, is the feed: ``location/feed.py``.)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from location import wire
from location.store import LocationStore
from protos import events
from protos.driver.v1 import events_pb2 as driver_events
from protos.trip.v1 import events_pb2 as trip_events
from rideshare.bus import Envelope

__all__ = ["CONSUMED_SUBJECTS", "AvailabilityUpdater"]

logger = logging.getLogger(__name__)

CONSUMED_SUBJECTS = (
    events.DRIVER_ONLINE,
    events.DRIVER_OFFLINE,
    events.TRIP_ACCEPTED,
    events.TRIP_OFFER_ENDED,
    events.TRIP_DRIVER_CANCELLED,
    events.TRIP_COMPLETED,
    events.TRIP_CANCELLED,
)

Handler = Callable[[Envelope], Awaitable[None]]


class AvailabilityUpdater:
    """Applies driver and trip events to the availability index: the rule of who is
    AVAILABLE, ON_TRIP or OFFLINE lives here and in the rebuild (``domain.snapshot_entries``),
    nowhere else.

    Idempotent by event id (a claim in Redis under ``consumer``, the durable consumer's name),
    and ordered per driver by the event's time: a change is applied only when no newer one
    was, so a late or replayed event never flips a newer state (the claims are in Redis too,
    so after a flush the time guard is what holds). A trip's event frees a driver only while
    that trip holds them.
    """

    def __init__(self, store: LocationStore, *, consumer: str) -> None:
        self._store = store
        self._consumer = consumer
        self._handlers: dict[str, Handler] = {
            events.DRIVER_ONLINE: self._driver_online,
            events.DRIVER_OFFLINE: self._driver_offline,
            events.TRIP_ACCEPTED: self._trip_accepted,
            events.TRIP_OFFER_ENDED: self._driver_released,
            events.TRIP_DRIVER_CANCELLED: self._driver_released,
            events.TRIP_COMPLETED: self._driver_released,
            events.TRIP_CANCELLED: self._driver_released,
        }

    async def handle(self, envelope: Envelope, _msg: Msg) -> None:
        handler = self._handlers.get(envelope.type)
        if handler is None:
            return
        if not await self._store.claim_event(self._consumer, envelope.event_id):
            return
        try:
            await handler(envelope)
        except BaseException:
            await self._store.forget_event(self._consumer, envelope.event_id)
            raise

    async def _driver_online(self, envelope: Envelope) -> None:
        event = envelope.unpack(driver_events.DriverWentOnline)
        await self._applied(
            envelope,
            event.driver_id,
            self._store.driver_online(
                event.driver_id,
                wire.vehicle_class_from_proto(event.vehicle_class),
                at_ms=_at_ms(envelope),
            ),
        )

    async def _driver_offline(self, envelope: Envelope) -> None:
        event = envelope.unpack(driver_events.DriverWentOffline)
        await self._applied(
            envelope,
            event.driver_id,
            self._store.driver_offline(event.driver_id, at_ms=_at_ms(envelope)),
        )

    async def _trip_accepted(self, envelope: Envelope) -> None:
        event = envelope.unpack(trip_events.TripAccepted)
        await self._applied(
            envelope,
            event.driver_id,
            self._store.assign(event.driver_id, event.trip_id, at_ms=_at_ms(envelope)),
        )

    async def _driver_released(self, envelope: Envelope) -> None:
        held = wire.held_driver(envelope.unpack(events.payload_type(envelope.type)))
        if held is None:
            return
        driver_id, trip_id = held
        await self._applied(
            envelope,
            driver_id,
            self._store.free(driver_id, trip_id, at_ms=_at_ms(envelope)),
        )

    @staticmethod
    async def _applied(envelope: Envelope, driver_id: str, change: Awaitable[bool]) -> None:
        if not await change:
            logger.debug(
                "%s %s left driver %s as they were (newer state or another trip's hold)",
                envelope.type,
                envelope.event_id,
                driver_id,
            )


def _at_ms(envelope: Envelope) -> int:
    return int(envelope.occurred_at.timestamp() * 1000)
