"""What the driver service consumes: trip.* events, for on-trip status and drivers' ratings.

(What it publishes, driver.*, is queued by ``commands`` and built by ``wire``.)
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from driver import wire
from driver.commands import DriverCommands
from protos import events
from protos.trip.v1 import events_pb2 as trip_events
from rideshare.bus import Envelope

__all__ = ["CONSUMED_SUBJECTS", "DURABLE", "TripStatusConsumer"]

logger = logging.getLogger(__name__)

# One durable for all copies of the service: they share the work.
DURABLE = "driver"

CONSUMED_SUBJECTS = (*wire.TRIP_HOLD_SUBJECTS, events.TRIP_RATED)


class TripStatusConsumer:
    """Keeps the drivers' on-trip status and ratings from trip.* events, once per event."""

    def __init__(self, commands: DriverCommands, *, consumer: str = DURABLE) -> None:
        self._commands = commands
        self._consumer = consumer

    async def handle(self, envelope: Envelope, _msg: Msg | None = None) -> None:
        """Apply one event; a redelivered one (same event id) changes nothing."""
        if envelope.type == events.TRIP_RATED:
            await self._rated(envelope)
            return
        if envelope.type not in wire.TRIP_HOLD_SUBJECTS:
            return
        hold = wire.trip_hold(
            envelope.unpack(events.payload_type(envelope.type)),
            version=envelope.aggregate_version,
        )
        if hold is None:
            return  # e.g. a trip cancelled before any driver was involved
        await self._commands.apply_trip_hold(
            hold, consumer=self._consumer, event_id=envelope.event_id
        )

    async def _rated(self, envelope: Envelope) -> None:
        rating = wire.driver_rating(
            envelope.unpack(trip_events.TripRated), rated_at=envelope.occurred_at
        )
        if rating is None:
            return  # a driver rating a rider: the rider service's business
        if not rating.valid:
            logger.warning("ignoring invalid rating in event %s", envelope.event_id)
            return
        await self._commands.apply_rating(
            rating, consumer=self._consumer, event_id=envelope.event_id
        )
