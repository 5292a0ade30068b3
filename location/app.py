"""Wiring of the location service: Redis, NATS, the gRPC server and the background workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from location.events import CONSUMED_SUBJECTS, AvailabilityUpdater
from location.feed import PositionFeed
from location.rebuild import RecordsClient, keep_index_built
from location.server import ACCESS, ERRORS, LocationServicer, now_ms
from location.settings import LocationSettings
from location.store import LocationStore
from protos import events
from protos.location.v1 import location_pb2_grpc
from rideshare import bus
from rideshare.grpc_errors import log_round_failure
from rideshare.grpc_server import GrpcServer
from rideshare.identity import TokenSigner
from rideshare.runtime import service_runtime
from rideshare.settings import ServiceSettings

__all__ = ["SERVICE_NAME", "running"]

logger = logging.getLogger(__name__)

SERVICE_NAME = "rideshare.location.v1.LocationService"


async def sweep_stale(
    store: LocationStore, settings: LocationSettings, stop: asyncio.Event
) -> None:
    """Drop drivers not heard from within the staleness bound out of the GEO sets, and
    release OFFERED holds older than any offer can live."""
    while not stop.is_set():
        try:
            now = now_ms()
            removed = await store.sweep_stale(cutoff_ms=now - settings.stale_ms)
            if removed:
                logger.info("swept %d stale drivers out of the index", removed)
            released = await store.release_held(
                cutoff_ms=now - int(settings.offer_hold_max_s * 1000)
            )
            if released:
                logger.warning("released %d drivers held OFFERED past the bound", released)
        except Exception as exc:
            log_round_failure(logger, "stale sweep failed", exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.sweep_interval_s):
                await stop.wait()


@contextlib.asynccontextmanager
async def running(
    settings: ServiceSettings, location: LocationSettings | None = None
) -> AsyncIterator[GrpcServer]:
    """The service, serving on its port until the context exits.

    With the driver and trip services' addresses in ``location`` (both non-empty), it also
    rebuilds availability from them whenever Redis comes back empty (``location.rebuild``).
    """
    location = location if location is not None else LocationSettings.from_env()
    async with contextlib.AsyncExitStack() as stack:
        records = None
        if location.driver_addr and location.trip_addr:
            # Opened first, closed last: the rebuilder uses it until the runtime stopped it.
            records = RecordsClient(
                location.driver_addr,
                location.trip_addr,
                timeout_s=location.rebuild_timeout_s,
                signer=TokenSigner(settings.internal_secret, settings.name),
            )
            stack.push_async_callback(records.close)
        rt = await stack.enter_async_context(service_runtime(settings, use_redis=True))
        assert rt.redis is not None
        store = LocationStore(rt.redis, shards=location.shards, track_cap=location.track_cap)
        server = rt.grpc_server(errors=ERRORS, access=ACCESS)
        location_pb2_grpc.add_LocationServiceServicer_to_server(
            LocationServicer(
                store, PositionFeed(rt.nc, watch_queue=location.watch_queue), location
            ),
            server.server,
        )
        server.add_service_name(SERVICE_NAME)
        rt.run_worker(lambda stop: sweep_stale(store, location, stop), name="stale-sweeper")
        rt.run_worker(
            lambda stop: bus.run_consumer(
                rt.js,
                stream=events.STREAM,
                durable=location.consumer_name,
                filter_subjects=CONSUMED_SUBJECTS,
                handler=AvailabilityUpdater(store, consumer=location.consumer_name).handle,
                stop=stop,
                only_new=True,
            ),
            name="availability-consumer",
        )
        if records is not None:
            rebuilder = records
            rt.run_worker(
                lambda stop: keep_index_built(
                    store, rebuilder, stop, check_s=location.rebuild_check_s, clock_ms=now_ms
                ),
                name="index-rebuilder",
            )
        async with rt.serving(server):
            yield server
