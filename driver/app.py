"""Wiring of the driver service: Postgres (schema, migrations, outbox), NATS, gRPC, consumer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from driver.commands import DriverCommands
from driver.events import CONSUMED_SUBJECTS, DURABLE, TripStatusConsumer
from driver.server import ACCESS, ERRORS, DriverServicer
from driver.store import DriverStore
from protos import events
from protos.driver.v1 import driver_pb2, driver_pb2_grpc
from rideshare import bus
from rideshare.credentials import PasswordHasher
from rideshare.grpc_server import GrpcServer
from rideshare.runtime import service_runtime
from rideshare.settings import ServiceSettings

__all__ = ["MIGRATIONS", "SCHEMA", "SERVICE_NAME", "running"]

SERVICE_NAME = driver_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name
SCHEMA = "driver"
MIGRATIONS = Path(__file__).parent / "migrations"


@contextlib.asynccontextmanager
async def running(
    settings: ServiceSettings, *, schema: str = SCHEMA, durable: str = DURABLE
) -> AsyncIterator[GrpcServer]:
    """The service, serving on its port until the context exits. Tests pass a schema and a
    durable consumer name of their own."""
    async with service_runtime(settings, schema=schema, migrations=MIGRATIONS) as rt:
        assert rt.pool is not None
        store = DriverStore(rt.pool)
        hasher = PasswordHasher(concurrency=settings.kdf_concurrency, queue=settings.kdf_queue)
        server = rt.grpc_server(errors=ERRORS, access=ACCESS)
        commands = DriverCommands(store, hasher)
        driver_pb2_grpc.add_DriverServiceServicer_to_server(
            DriverServicer(commands, store), server.server
        )
        server.add_service_name(SERVICE_NAME)
        consumer = TripStatusConsumer(commands, consumer=durable)
        rt.run_worker(
            lambda stop: bus.run_consumer(
                rt.js,
                stream=events.STREAM,
                durable=durable,
                filter_subjects=CONSUMED_SUBJECTS,
                handler=consumer.handle,
                stop=stop,
            ),
            name="trip-status-consumer",
        )
        try:
            async with rt.serving(server):
                yield server
        finally:
            hasher.close()  # after the server drained: no call is waiting for a hash
