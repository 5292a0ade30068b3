"""Wiring of the rider service: Postgres (schema, migrations, outbox), NATS, gRPC, consumer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from protos import events
from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from rider.commands import RiderCommands
from rider.events import CONSUMED_SUBJECTS, DURABLE, TripHistoryConsumer
from rider.payment_store import PaymentStore
from rider.payments import PaymentCommands, PaymentWorker
from rider.provider import StripeProvider
from rider.server import ACCESS, ERRORS, RiderServicer
from rider.settings import PaymentSettings
from rider.store import RiderStore
from rideshare import bus
from rideshare.credentials import PasswordHasher
from rideshare.grpc_server import GrpcServer
from rideshare.runtime import service_runtime
from rideshare.settings import ServiceSettings

__all__ = ["MIGRATIONS", "SCHEMA", "SERVICE_NAME", "running"]

SERVICE_NAME = rider_pb2.DESCRIPTOR.services_by_name["RiderService"].full_name
SCHEMA = "rider"
MIGRATIONS = Path(__file__).parent / "migrations"


@contextlib.asynccontextmanager
async def running(
    settings: ServiceSettings,
    payment: PaymentSettings | None = None,
    *,
    schema: str = SCHEMA,
    durable: str = DURABLE,
) -> AsyncIterator[GrpcServer]:
    """The service, serving on its port until the context exits. Tests pass a schema and a
    durable consumer name of their own."""
    payment = payment or PaymentSettings.from_env(settings.infra.stripe_api_base)
    provider = StripeProvider(
        api_base=payment.api_base, api_key=payment.api_key, timeout_s=payment.timeout_s
    )
    async with (
        contextlib.AsyncExitStack() as stack,
        service_runtime(settings, schema=schema, migrations=MIGRATIONS) as rt,
    ):
        stack.push_async_callback(provider.close)
        assert rt.pool is not None
        store = RiderStore(rt.pool)
        payment_store = PaymentStore(rt.pool)
        wake = asyncio.Event()  # a new charge is due: the worker looks now, not at its poll
        hasher = PasswordHasher(concurrency=settings.kdf_concurrency, queue=settings.kdf_queue)
        server = rt.grpc_server(errors=ERRORS, access=ACCESS)
        commands = RiderCommands(store, hasher, payments=payment_store, on_charge=wake.set)
        rider_pb2_grpc.add_RiderServiceServicer_to_server(
            RiderServicer(
                commands,
                store,
                payments=PaymentCommands(
                    payment_store, provider, wake, lease_s=payment.worker.lease_s
                ),
                payment_store=payment_store,
            ),
            server.server,
        )
        worker = PaymentWorker(payment_store, provider, policy=payment.worker, wake=wake)
        rt.run_worker(worker.run, name="payment-worker")
        server.add_service_name(SERVICE_NAME)
        consumer = TripHistoryConsumer(commands, consumer=durable)
        rt.run_worker(
            lambda stop: bus.run_consumer(
                rt.js,
                stream=events.STREAM,
                durable=durable,
                filter_subjects=CONSUMED_SUBJECTS,
                handler=consumer.handle,
                stop=stop,
            ),
            name="trip-history-consumer",
        )
        try:
            async with rt.serving(server):
                yield server
        finally:
            hasher.close()  # after the server drained: no call is waiting for a hash
