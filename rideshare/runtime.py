"""What every service process does the same way: open its stores, run workers, serve, stop.

A service's ``app.py`` builds on :func:`service_runtime`::

    @contextlib.asynccontextmanager
    async def running(settings: ServiceSettings) -> AsyncIterator[GrpcServer]:
        async with service_runtime(settings, schema="rider", migrations=MIGRATIONS) as rt:
            server = rt.grpc_server(errors=ERRORS)  # the service's domain error -> status table
            rider_pb2_grpc.add_RiderServiceServicer_to_server(RiderServicer(...), server.server)
            server.add_service_name(SERVICE_NAME)
            rt.run_worker(some_consumer.run)
            async with rt.serving(server):
                yield server

and its ``__main__.py`` is ``run_service("rider", running)``. Shutdown order, from the
inside out: stop accepting gRPC calls and drain them, signal the workers and wait for them,
drain NATS, close Redis, close the Postgres pool: nothing is closed while something
above it may still use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from rideshare import bus, db
from rideshare.grpc_errors import StatusTable
from rideshare.grpc_server import GrpcServer
from rideshare.identity import AccessTable
from rideshare.lifecycle import stop_on_signals
from rideshare.log import configure_logging
from rideshare.metrics import start_metrics_server
from rideshare.migrations import apply_migrations
from rideshare.outbox import OutboxRelay
from rideshare.ports import PortInUseError
from rideshare.redis_client import RedisClient, open_redis
from rideshare.settings import ServiceSettings, SettingsError, service_settings

__all__ = ["Runtime", "open_redis", "run_service", "service_runtime", "tune_gc_for_serving"]

logger = logging.getLogger(__name__)

Worker = Callable[[asyncio.Event], Awaitable[object]]


@dataclass
class Runtime:
    """The open stores of one service process and its background workers."""

    settings: ServiceSettings
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool | None
    redis: RedisClient | None
    stop: asyncio.Event
    _workers: asyncio.TaskGroup = field(repr=False)
    outbox: OutboxRelay | None = None  # the relay of the schema's outbox, when there is one

    def run_worker(self, worker: Worker, *, name: str | None = None) -> None:
        """Run ``worker(stop)`` until it returns; it must return soon after ``stop`` is set."""
        self._workers.create_task(worker(self.stop), name=name)  # type: ignore[arg-type]

    async def ready(self) -> None:
        """Raises unless every store answers: the gRPC health check's readiness."""
        if not self.nc.is_connected:
            raise ConnectionError("NATS is not connected")
        if self.pool is not None:
            await db.ping(self.pool)
        if self.redis is not None:
            await self.redis.ping()

    def grpc_server(
        self, *, errors: StatusTable | None = None, access: AccessTable | None = None
    ) -> GrpcServer:
        """The service's gRPC server on its configured address, healthy when ready(), ending
        calls whose handler raised a domain error with the code ``errors`` gives it, and
        calls that ``access`` does not allow."""
        return GrpcServer(
            self.settings.name,
            host=self.settings.host,
            port=self.settings.grpc_port,
            readiness=self.ready,
            bind_retry_s=self.settings.bind_retry_s,
            errors=errors,
            access=access,
            secret=self.settings.internal_secret,
        )

    @contextlib.asynccontextmanager
    async def serving(self, server: GrpcServer) -> AsyncIterator[GrpcServer]:
        """Serve until the context exits, then drain in-flight calls for the grace period."""
        await server.start()
        try:
            yield server
        finally:
            await server.stop(self.settings.shutdown_grace_s)


@contextlib.asynccontextmanager
async def service_runtime(
    settings: ServiceSettings,
    *,
    schema: str | None = None,
    migrations: Path | None = None,
    use_redis: bool = False,
) -> AsyncIterator[Runtime]:
    """Open NATS (and ensure the stream), plus Postgres with migrations applied and the
    outbox relay running when ``schema`` is given, and Redis when asked."""
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        pool = None
        if schema is not None:
            pool = await db.create_pool(
                settings.infra.postgres_dsn, schema=schema, max_size=settings.db_pool_max
            )
            stack.push_async_callback(pool.close)
            applied = await apply_migrations(pool, schema=schema, directory=migrations)
            if applied:
                logger.info("applied migrations to %s: %s", schema, ", ".join(applied))
        redis = None
        if use_redis:
            redis = open_redis(settings.infra.redis_url)
            stack.push_async_callback(redis.aclose)
        nc = await bus.connect(settings.infra.nats_url, name=settings.name)
        stack.push_async_callback(nc.drain)
        js = nc.jetstream()
        await bus.ensure_stream(js, replicas=settings.infra.jetstream_replicas)

        workers = await stack.enter_async_context(asyncio.TaskGroup())
        # Registered after the TaskGroup, so it runs before the group joins: workers see stop.
        stack.callback(stop.set)
        runtime = Runtime(settings, nc, js, pool, redis, stop, workers)
        if pool is not None and schema is not None:
            runtime.outbox = OutboxRelay(pool, js, schema=schema)
            runtime.run_worker(runtime.outbox.run, name="outbox-relay")
        yield runtime


RunningFactory = Callable[[ServiceSettings], contextlib.AbstractAsyncContextManager[Any]]


# Young collections every 50,000 allocations instead of 700: short-lived objects (messages,
# envelopes) die by reference count before a collection sees them, so few are promoted
# towards a full collection, whose pauses (hundreds of ms over a large heap) land on every
# call in flight.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc_for_serving() -> None:
    """Call once the process is up: what is alive now (modules, pools, servers) lives for
    the whole run, so it is frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve_until_signalled(settings: ServiceSettings, running: RunningFactory) -> None:
    """Run the service until SIGTERM or SIGINT, then shut it down in order."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with running(settings):
        tune_gc_for_serving()
        await stop.wait()
    logger.info("%s stopped", settings.name)


def run_service(name: str, running: RunningFactory) -> None:
    """The body of ``python -m <service>``: settings -> logging -> metrics -> serve."""
    try:
        settings = service_settings(name)
    except SettingsError as exc:
        sys.exit(f"{name}: {exc}")
    configure_logging(name, settings.log_level)
    start_metrics_server(settings.host, settings.metrics_port)
    try:
        # uvloop: the event loop and transports in C; grpc.aio runs on any asyncio loop.
        uvloop.run(serve_until_signalled(settings, running))
    # A service's own settings, read as it starts, or its port, taken: one line, no traceback.
    # except*, as they may come wrapped in groups by the runtime's TaskGroup.
    except* (SettingsError, PortInUseError) as errors:
        sys.exit(f"{name}: {_first_leaf(errors)}")


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
