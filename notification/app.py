"""Wiring of the notification service: Postgres, NATS, the consumer, the delivery worker and
the gRPC server.

Any number of copies may run: they share one durable JetStream consumer (each event goes to
one copy), the delivery rows (SKIP LOCKED plus a lease) and the database; Subscribe works in
every copy because the in-app channel is core NATS.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from notification.delivery import DeliveryWorker
from notification.domain import Channel, Notification
from notification.events import EventProcessor, NotificationConsumer
from notification.feed import InAppFeed
from notification.providers import LogPushProvider, LogSmsProvider, Provider
from notification.server import ACCESS, ERRORS, NotificationServicer
from notification.settings import NotificationSettings
from notification.store import NotificationStore
from protos.notification.v1 import notification_pb2_grpc
from rideshare.grpc_server import GrpcServer
from rideshare.runtime import service_runtime
from rideshare.settings import ServiceSettings

__all__ = ["MIGRATIONS", "SERVICE_NAME", "Service", "running"]

SERVICE_NAME = "rideshare.notification.v1.NotificationService"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Service:
    """A running copy: its gRPC server, and what tests and benchmarks look at."""

    server: GrpcServer
    store: NotificationStore
    consumer: NotificationConsumer
    worker: DeliveryWorker

    @property
    def port(self) -> int:
        return self.server.port


def default_providers() -> dict[Channel, Provider]:
    """The shipped providers: push and SMS to the log (see providers.py)."""
    return {Channel.PUSH: LogPushProvider(), Channel.SMS: LogSmsProvider()}


@contextlib.asynccontextmanager
async def running(
    settings: ServiceSettings,
    notification: NotificationSettings | None = None,
    *,
    providers: Mapping[Channel, Provider] | None = None,
) -> AsyncIterator[Service]:
    """The service, consuming and serving until the context exits."""
    notification = notification if notification is not None else NotificationSettings.from_env()
    providers = providers if providers is not None else default_providers()
    async with service_runtime(settings, schema=notification.schema, migrations=MIGRATIONS) as rt:
        assert rt.pool is not None
        store = NotificationStore(rt.pool, consumer=notification.durable)
        feed = InAppFeed(rt.nc, watch_queue=notification.watch_queue)
        worker = DeliveryWorker(store, providers, notification.delivery)

        async def after_commit(created: Sequence[Notification]) -> None:
            await feed.publish(created)
            if any(Channel.PUSH in n.channels or Channel.SMS in n.channels for n in created):
                worker.wake()

        consumer = NotificationConsumer(
            rt.js,
            EventProcessor(store, after_commit=after_commit),
            durable=notification.durable,
            max_deliver=notification.max_deliver,
            ack_wait_s=notification.ack_wait_s,
            batch=notification.batch,
            fetch_timeout_s=notification.fetch_timeout_s,
            backoff_s=notification.backoff_s,
        )
        server = rt.grpc_server(errors=ERRORS, access=ACCESS)
        notification_pb2_grpc.add_NotificationServiceServicer_to_server(
            NotificationServicer(store, feed), server.server
        )
        server.add_service_name(SERVICE_NAME)
        rt.run_worker(consumer.run, name="event-consumer")
        rt.run_worker(worker.run, name="delivery-worker")
        async with rt.serving(server):
            yield Service(server=server, store=store, consumer=consumer, worker=worker)
