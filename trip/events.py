"""What the trip service consumes: driver.offline (its events are published via the outbox,
built in ``wire``)."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from protos import events
from protos.driver.v1 import events_pb2 as driver_events
from rideshare.bus import Envelope
from trip.commands import TripCommands

__all__ = ["CONSUMED_SUBJECTS", "DriverOfflineHandler"]

logger = logging.getLogger(__name__)

CONSUMED_SUBJECTS = (events.DRIVER_OFFLINE,)


class DriverOfflineHandler:
    """driver.offline: release the driver's pending offer (dispatch moves on), or hand their
    accepted, not yet started trip back to dispatch. Idempotent by event id."""

    def __init__(self, commands: TripCommands, *, consumer: str) -> None:
        self._commands = commands
        self._consumer = consumer

    async def handle(self, envelope: Envelope, _msg: Msg) -> None:
        if envelope.type != events.DRIVER_OFFLINE:
            return
        event = envelope.unpack(driver_events.DriverWentOffline)
        if not event.driver_id:
            logger.warning("driver.offline %s without a driver id; ignored", envelope.event_id)
            return
        await self._commands.driver_offline(
            event.driver_id, consumer=self._consumer, event_id=envelope.event_id
        )
