"""What the location service publishes (live positions) and consumes (driver and trip events)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from location.store import LocationStore
from protos import events
from protos.driver.v1 import events_pb2 as driver_events
from protos.location.v1 import location_pb2
from protos.trip.v1 import events_pb2 as trip_events
from rideshare.bus import Envelope

__all__ = ["CONSUMED_SUBJECTS", "DURABLE", "AvailabilityUpdater", "PositionFeed"]

logger = logging.getLogger(__name__)

DURABLE = "location"
CONSUMED_SUBJECTS = (
    events.DRIVER_ONLINE,
    events.DRIVER_OFFLINE,
    events.TRIP_ACCEPTED,
    events.TRIP_OFFER_ENDED,
    events.TRIP_DRIVER_CANCELLED,
    events.TRIP_COMPLETED,
    events.TRIP_CANCELLED,
)


class PositionFeed:
    """Live positions on core NATS ``location.driver.<id>``: every service copy publishes
    what it accepted, every watcher (in any copy) subscribes to its one driver."""

    def __init__(self, nc: NATS, *, watch_queue: int = 256) -> None:
        self._nc = nc
        self._watch_queue = watch_queue

    async def publish_applied(
        self,
        updates: Sequence[location_pb2.PositionUpdate],
        availabilities: Sequence[int],
        *,
        server_ts_ms: int,
    ) -> None:
        """Publish each applied update (availability != 0) as a DriverPosition.

        DriverPosition repeats PositionUpdate's fields 1-7 with the same numbers and types,
        and protobuf parses concatenated messages as one merged message, so the update's own
        bytes plus the two service fields are a valid DriverPosition without building one:
        this runs for every update the service takes.
        """
        tails: dict[int, bytes] = {}
        for update, availability in zip(updates, availabilities, strict=True):
            if not availability:
                continue
            tail = tails.get(availability)
            if tail is None:
                tail = tails[availability] = location_pb2.DriverPosition(
                    server_ts_ms=server_ts_ms,
                    availability=availability,  # type: ignore[arg-type]
                ).SerializeToString()
            await self._nc.publish(
                events.location_driver_subject(update.driver_id),
                update.SerializeToString() + tail,
            )

    @contextlib.asynccontextmanager
    async def watch(
        self, driver_id: str
    ) -> AsyncIterator[AsyncIterator[location_pb2.DriverPosition]]:
        """Live positions of one driver while the context is open. A watcher too slow to keep
        up loses the oldest positions (NATS drops them), never the stream."""
        sub = await self._nc.subscribe(
            events.location_driver_subject(driver_id), pending_msgs_limit=self._watch_queue
        )

        async def positions() -> AsyncIterator[location_pb2.DriverPosition]:
            async for msg in sub.messages:
                yield location_pb2.DriverPosition.FromString(msg.data)

        try:
            yield positions()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


Handler = Callable[[Envelope], Awaitable[None]]


class AvailabilityUpdater:
    """Applies driver and trip events to the availability index: the rule of who is
    AVAILABLE, ON_TRIP or OFFLINE lives here and in the rebuild (``domain.snapshot_entries``),
    nowhere else.

    Idempotent by event id (a claim in Redis), and ordered per driver by the event's time: a
    change is applied only when no newer one was, so a late or replayed event never flips a
    newer state (the claims are in Redis too, so after a flush the time guard is what holds).
    A trip's event frees a driver only while that trip holds them.
    """

    def __init__(self, store: LocationStore) -> None:
        self._store = store
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
        if not await self._store.claim_event(DURABLE, envelope.event_id):
            return
        try:
            await handler(envelope)
        except BaseException:
            await self._store.forget_event(DURABLE, envelope.event_id)
            raise

    async def _driver_online(self, envelope: Envelope) -> None:
        event = envelope.unpack(driver_events.DriverWentOnline)
        await self._applied(
            envelope,
            event.driver_id,
            self._store.driver_online(
                event.driver_id, int(event.vehicle_class), at_ms=_at_ms(envelope)
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
        event = envelope.unpack(events.payload_type(envelope.type))
        driver_id = str(getattr(event, "driver_id", ""))
        trip_id = str(getattr(event, "trip_id", ""))
        if not driver_id or not trip_id:
            return
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
