"""The in-app channel: core NATS ``notify.user.<user_id>``, published by whichever copy stored
the notification, read by the edge and by Subscribe in any copy."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from nats.aio.client import Client as NATS

from notification import wire
from notification.domain import Channel, Notification
from protos import events
from protos.notification.v1 import notification_pb2
from rideshare.grpc_errors import outage_of

__all__ = ["InAppFeed"]

logger = logging.getLogger(__name__)


class InAppFeed:
    """Publishes stored in-app notifications and streams one user's live ones."""

    def __init__(self, nc: NATS, *, watch_queue: int = 256) -> None:
        self._nc = nc
        self._watch_queue = watch_queue

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish the in-app ones. Called only after their transaction committed: a push
        lost here (no subscriber, NATS down, a crash right now) loses nothing, because the
        stored notification is the record and the app reads it with ListNotifications; and
        a redelivered event is not pushed twice, because it is never committed twice."""
        for notification in notifications:
            if Channel.IN_APP not in notification.channels:
                continue
            try:
                await self._nc.publish(
                    events.notify_user_subject(notification.user_id),
                    wire.notification_to_proto(notification).SerializeToString(),
                )
            except Exception:
                logger.warning(
                    "in-app push of notification %s to %s lost (stored all the same)",
                    notification.id,
                    notification.user_id,
                    exc_info=True,
                )

    @contextlib.asynccontextmanager
    async def watch(
        self, user_id: str
    ) -> AsyncIterator[AsyncIterator[notification_pb2.Notification]]:
        """The user's live notifications while the context is open; subscribed (and the
        interest known to the server) on entry. A watcher too slow to keep up loses the
        oldest (NATS drops them); ListNotifications still has them."""
        subject = events.notify_user_subject(user_id)
        sub = await self._nc.subscribe(subject, pending_msgs_limit=self._watch_queue)
        try:
            await self._nc.flush(timeout=5)

            async def stream() -> AsyncIterator[notification_pb2.Notification]:
                async for msg in sub.messages:
                    yield notification_pb2.Notification.FromString(msg.data)

            yield stream()
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                # The watcher is gone either way, and a connection that is closing or
                # reconnecting drops the interest with it: that is no news.
                level = logging.DEBUG if outage_of(exc) else logging.WARNING
                logger.log(level, "unsubscribing from %s failed: %r", subject, exc)
