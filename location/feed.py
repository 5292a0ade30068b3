"""The live position feed: core NATS ``location.driver.<id>``, published by every service copy
for what it accepted, subscribed by every watcher (in any copy) for its one driver."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from nats.aio.client import Client as NATS

from location import wire
from location.domain import Availability
from protos import events
from protos.location.v1 import location_pb2
from rideshare.grpc_errors import outage_of

__all__ = ["PositionFeed"]

logger = logging.getLogger(__name__)


class PositionFeed:
    """Publishes applied updates and streams one driver's positions to a watcher."""

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
        """Publish each applied update (availability != 0) as a DriverPosition: the update's
        own bytes plus the service's fields (:func:`location.wire.position_tail`), so that
        no message is built per update."""
        tails: dict[int, bytes] = {}
        for update, availability in zip(updates, availabilities, strict=True):
            if not availability:
                continue
            tail = tails.get(availability)
            if tail is None:
                tail = tails[availability] = wire.position_tail(
                    server_ts_ms=server_ts_ms, availability=Availability(availability)
                )
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
        subject = events.location_driver_subject(driver_id)
        sub = await self._nc.subscribe(subject, pending_msgs_limit=self._watch_queue)

        async def positions() -> AsyncIterator[location_pb2.DriverPosition]:
            async for msg in sub.messages:
                yield location_pb2.DriverPosition.FromString(msg.data)

        try:
            yield positions()
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                # The watcher is gone either way, and a connection that is closing or
                # reconnecting drops the interest with it: that is no news.
                level = logging.DEBUG if outage_of(exc) else logging.WARNING
                logger.log(level, "unsubscribing from %s failed: %r", subject, exc)
