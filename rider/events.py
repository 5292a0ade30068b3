"""What the rider service consumes: trip.* events, for the trip history and riders' ratings.

(What it publishes, rider.*, is queued by ``commands`` and built by ``wire``.)
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from protos import events
from protos.trip.v1 import events_pb2 as trip_events
from rider import wire
from rider.commands import RiderCommands
from rideshare.bus import Envelope

__all__ = ["CONSUMED_SUBJECTS", "DURABLE", "TripHistoryConsumer"]

logger = logging.getLogger(__name__)

# One durable for all copies of the service: they share the work.
DURABLE = "rider"

CONSUMED_SUBJECTS = (*wire.TRIP_UPDATE_SUBJECTS, events.TRIP_RATED)


class TripHistoryConsumer:
    """Keeps the trip history and the riders' ratings from trip.* events, once per event."""

    def __init__(self, commands: RiderCommands, *, consumer: str = DURABLE) -> None:
        self._commands = commands
        self._consumer = consumer

    async def handle(self, envelope: Envelope, _msg: Msg | None = None) -> None:
        """Apply one event; a redelivered one (same event id) changes nothing."""
        if envelope.type == events.TRIP_RATED:
            await self._rated(envelope)
            return
        if envelope.type not in wire.TRIP_UPDATE_SUBJECTS:
            return
        update = wire.trip_update(
            envelope.unpack(events.payload_type(envelope.type)),
            version=envelope.aggregate_version,
            occurred_at=envelope.occurred_at,
        )
        if update is None:
            return
        if not update.trip_id or not update.rider_id:
            logger.warning(
                "ignoring %s %s without trip or rider id", envelope.type, envelope.event_id
            )
            return
        await self._commands.apply_trip(update, consumer=self._consumer, event_id=envelope.event_id)

    async def _rated(self, envelope: Envelope) -> None:
        rating = wire.rider_rating(
            envelope.unpack(trip_events.TripRated), rated_at=envelope.occurred_at
        )
        if rating is None:
            return  # a rider rating a driver: the driver service's business
        if not rating.valid:
            logger.warning("ignoring invalid rating in event %s", envelope.event_id)
            return
        await self._commands.apply_rating(
            rating, consumer=self._consumer, event_id=envelope.event_id
        )
