"""gRPC servicer of rideshare.notification.v1.NotificationService: requests to the store and
the in-app feed. Conversion is in ``wire``; a domain error raised here becomes its status
through ``ERRORS``, which the server's interceptor applies (``rideshare.grpc_server``), with
the callers ``ACCESS`` names. A user's notifications are theirs alone: a call the edge makes
for one user naming another is PERMISSION_DENIED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from notification import domain, wire
from notification.domain import InvalidArgumentError
from notification.feed import InAppFeed
from notification.store import NotificationStore
from protos.notification.v1 import notification_pb2, notification_pb2_grpc
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable
from rideshare.identity import AccessTable, access_table, allow, require_acting_as

__all__ = ["ACCESS", "ERRORS", "SUBSCRIBED_METADATA_KEY", "NotificationServicer"]

# Subscribe sends this initial metadata once it listens: a client that awaits
# ``call.initial_metadata()`` knows that nothing created from then on will be missed.
SUBSCRIBED_METADATA_KEY = "x-subscribed"

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
}

ACCESS: AccessTable = access_table(
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"],
    {
        "ListNotifications": allow(users=("rider", "driver")),
        "MarkRead": allow(users=("rider", "driver")),
        "Subscribe": allow(users=("rider", "driver")),
    },
)
"""Who may call each method (rideshare.identity); the operator may call every one."""

Context = grpc.aio.ServicerContext[Any, Any]


def _owner(user_id: str) -> str:
    """The request's user id, if valid and the acting user's own."""
    user_id = wire.user_id_of(user_id)
    require_acting_as(user_id, field="user_id")
    return user_id


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    """Reads notifications from the store and streams live ones from the in-app feed."""

    def __init__(self, store: NotificationStore, feed: InAppFeed) -> None:
        self._store = store
        self._feed = feed

    async def ListNotifications(
        self, request: notification_pb2.ListNotificationsRequest, context: Context
    ) -> notification_pb2.ListNotificationsResponse:
        user_id = _owner(request.user_id)
        size = domain.page_size(request.page_size)
        after = (
            domain.decode_page_token(
                request.page_token, user_id=user_id, unread_only=request.unread_only
            )
            if request.page_token
            else None
        )
        found = await self._store.list_for_user(
            user_id, limit=size + 1, unread_only=request.unread_only, after=after
        )
        page = found[:size]
        next_page_token = ""
        if len(found) > size:
            next_page_token = domain.encode_page_token(
                domain.cursor_after(page[-1], user_id=user_id, unread_only=request.unread_only)
            )
        return wire.list_response(page, next_page_token=next_page_token)

    async def MarkRead(
        self, request: notification_pb2.MarkReadRequest, context: Context
    ) -> notification_pb2.MarkReadResponse:
        user_id = _owner(request.user_id)
        ids = domain.parse_notification_ids(request.notification_ids)
        updated = await self._store.mark_read(user_id, ids)
        return notification_pb2.MarkReadResponse(updated=updated)

    async def Subscribe(
        self, request: notification_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[notification_pb2.Notification]:
        # Live only: what was created before the subscription is not replayed (the contract
        # says so). A client that must miss nothing subscribes, waits for the initial
        # metadata, then calls ListNotifications and merges the two by notification id.
        user_id = _owner(request.user_id)
        async with self._feed.watch(user_id) as live:
            await context.send_initial_metadata(((SUBSCRIBED_METADATA_KEY, "1"),))
            async for notification in live:
                yield notification
