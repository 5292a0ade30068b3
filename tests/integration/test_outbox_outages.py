"""The outbox relay across a PostgreSQL restart and a lost LISTEN connection, for real."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from protos.common.v1 import common_pb2
from rideshare.bus import decode_envelope
from rideshare.infra import EmbeddedInfra
from rideshare.migrations import apply_migrations
from rideshare.outbox import OutboxRelay, add_event, notify_channel
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.plumbing import read_all, schema_pool, scoped_stream


async def _add(pool: asyncpg.Pool, subject: str, versions: range) -> list[str]:
    """Events of one aggregate, committed durably even on a ``durable=False`` server (the
    test kills PostgreSQL right after)."""
    async with asyncio.timeout(20), pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        return [
            await add_event(
                conn,
                subject=subject,
                aggregate_id="trip-1",
                aggregate_version=version,
                payload=common_pb2.LatLng(lat=float(version)),
            )
            for version in versions
        ]


async def _unsent(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


@pytest.fixture
async def outage_urls(outage_infra: EmbeddedInfra) -> InfraUrls:
    assert outage_infra.urls is not None
    return outage_infra.urls


@pytest.fixture
async def outage_pool(outage_urls: InfraUrls, unique_name: str) -> AsyncIterator[asyncpg.Pool]:
    async with schema_pool(outage_urls.postgres_dsn, unique_name, max_size=4) as pool:
        async with asyncio.timeout(20):
            await apply_migrations(pool, schema=unique_name, directory=None)
        yield pool


async def test_the_relay_rides_out_a_postgres_restart_and_publishes_each_event_once(
    outage_infra: EmbeddedInfra, outage_urls: InfraUrls, outage_pool: asyncpg.Pool, unique_name: str
) -> None:
    async with scoped_stream(outage_urls.nats_url, unique_name) as bus:
        subject = f"{bus.prefix}.trip.accepted"
        relay = OutboxRelay(
            outage_pool,
            bus.js,
            schema=unique_name,
            poll_interval_s=0.2,
            error_backoff_s=0.2,
            max_error_backoff_s=1.0,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            before = await _add(outage_pool, subject, range(1, 4))
            await eventually(lambda: relay.published >= 3, timeout_s=30)
            # A batch committed just before the crash: some of it may be published and not
            # yet marked sent when the server dies, so it goes out again after the restart.
            during = await _add(outage_pool, subject, range(4, 54))
            os.kill(outage_infra.pid("postgres"), signal.SIGKILL)
            await eventually(lambda: outage_infra.dead() == ["postgres"], timeout_s=30)
            failed = relay.failed_rounds
            await eventually(lambda: relay.failed_rounds >= failed + 2, timeout_s=30)
            assert not task.done()

            await outage_infra.restart("postgres")
            after = await _add(outage_pool, subject, range(54, 57))
            await eventually(_all_sent(outage_pool), timeout_s=60)
            assert not task.done()
            msgs = await read_all(bus, subject, expect=56, within_s=30)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await task

    published = Counter(decode_envelope(m.data).event_id for m in msgs)
    assert set(published) == {*before, *during, *after}
    assert max(published.values()) == 1  # republished ones were dropped by JetStream


def _all_sent(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return await _unsent(pool) == 0
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False  # the pool's connections are still being replaced

    return check


async def _listener_pids(pool: asyncpg.Pool, schema: str) -> set[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1",
        f"LISTEN %{notify_channel(schema)}%",
    )
    return {int(r["pid"]) for r in rows}


async def test_the_relay_survives_losing_its_listener_connection(
    infra: InfraUrls, unique_name: str
) -> None:
    async with (
        schema_pool(infra.postgres_dsn, unique_name, max_size=4) as pool,
        scoped_stream(infra.nats_url, unique_name) as bus,
    ):
        await apply_migrations(pool, schema=unique_name, directory=None)
        subject = f"{bus.prefix}.trip.accepted"
        relay = OutboxRelay(pool, bus.js, schema=unique_name, poll_interval_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            first = await _add(pool, subject, range(1, 3))
            await eventually(lambda: relay.published >= 2, timeout_s=30)
            [old] = await _listener_pids(pool, unique_name)
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", old)

            async def listening_again() -> bool:
                pids = await _listener_pids(pool, unique_name)
                return bool(pids) and old not in pids

            await eventually(listening_again, timeout_s=30)
            assert not task.done()
            second = await _add(pool, subject, range(3, 5))
            msgs = await read_all(bus, subject, expect=4, within_s=30)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await task

    assert [decode_envelope(m.data).event_id for m in msgs] == [*first, *second]
