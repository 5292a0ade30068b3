"""Wiring of the trip service: Postgres, the location clients, NATS, the gRPC server, the
dispatcher, the sweeper of live trips' clocks and the driver.offline consumer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from protos import events
from protos.trip.v1 import trip_pb2_grpc
from rideshare import bus
from rideshare.grpc_server import GrpcServer
from rideshare.identity import TokenSigner
from rideshare.leader import LeaderLease
from rideshare.runtime import service_runtime
from rideshare.settings import ServiceSettings
from trip.commands import TripCommands
from trip.dispatch import Dispatcher, LocationClient
from trip.events import CONSUMED_SUBJECTS, DriverOfflineHandler
from trip.server import ACCESS, ERRORS, TripServicer
from trip.settings import TripSettings
from trip.store import TripStore
from trip.sweeper import PositionClient, Sweeper

__all__ = ["MIGRATIONS", "SERVICE_NAME", "running"]

logger = logging.getLogger(__name__)

SERVICE_NAME = "rideshare.trip.v1.TripService"
MIGRATIONS = Path(__file__).parent / "migrations"


@contextlib.asynccontextmanager
async def running(
    settings: ServiceSettings, trip: TripSettings | None = None, *, schema: str = "trip"
) -> AsyncIterator[GrpcServer]:
    """The service, serving on its port until the context exits.

    ``trip`` carries the location service's address and the dispatch settings (from the
    environment when not given); ``schema`` is the Postgres schema (tests pass their own).
    """
    trip = trip if trip is not None else TripSettings.from_env()
    async with contextlib.AsyncExitStack() as stack:
        # Opened first, closed last: the dispatcher workers use it until the runtime has
        # stopped them.
        signer = TokenSigner(settings.internal_secret, settings.name)
        location = LocationClient(
            trip.location_addr, timeout_s=trip.location_timeout_s, signer=signer
        )
        stack.push_async_callback(location.close)
        positions = PositionClient(
            trip.location_addr, timeout_s=trip.location_timeout_s, signer=signer
        )
        stack.push_async_callback(positions.close)
        rt = await stack.enter_async_context(
            service_runtime(settings, schema=schema, migrations=MIGRATIONS)
        )
        assert rt.pool is not None
        store = TripStore(rt.pool)
        flushed = rt.outbox.flushed if rt.outbox is not None else None
        dispatcher = Dispatcher(store, location, trip, flushed=flushed)
        commands = TripCommands(store, location, dispatcher, trip)
        server = rt.grpc_server(errors=ERRORS, access=ACCESS)
        trip_pb2_grpc.add_TripServiceServicer_to_server(TripServicer(commands), server.server)
        server.add_service_name(SERVICE_NAME)
        rt.run_worker(dispatcher.run, name="dispatcher")
        # Safe in every copy, but each round asks location about every ride in progress: one
        # copy at a time does it (the lease is per schema, so each test's service has its own).
        sweeper = Sweeper(store, commands, positions, trip)
        lease = LeaderLease(rt.pool, f"{schema}.sweeper")
        rt.run_worker(lambda stop: lease.run(sweeper.run, stop), name="sweeper")
        handler = DriverOfflineHandler(commands, consumer=trip.consumer_name)
        rt.run_worker(
            lambda stop: bus.run_consumer(
                rt.js,
                stream=events.STREAM,
                durable=trip.consumer_name,
                filter_subjects=CONSUMED_SUBJECTS,
                handler=handler.handle,
                stop=stop,
            ),
            name="driver-offline-consumer",
        )
        async with rt.serving(server):
            yield server
