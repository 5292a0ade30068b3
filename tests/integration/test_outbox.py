from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.msg import Msg

from protos.common.v1 import common_pb2
from protos.events import MSG_ID_HEADER
from rideshare.bus import Envelope, connect, decode_envelope, publish_envelope, run_consumer
from rideshare.db import create_pool
from rideshare.migrations import apply_migrations
from rideshare.outbox import OutboxRelay, add_event
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.plumbing import (
    Bus,
    read_all,
    schema_pool,
    scoped_stream,
    stored,
)


@pytest.fixture
async def pool(infra: InfraUrls, unique_name: str) -> AsyncIterator[asyncpg.Pool]:
    async with schema_pool(infra.postgres_dsn, unique_name, max_size=8) as pool:
        async with asyncio.timeout(20):
            await apply_migrations(pool, schema=unique_name, directory=None)
        yield pool


@pytest.fixture
async def bus(infra: InfraUrls, unique_name: str) -> AsyncIterator[Bus]:
    async with scoped_stream(infra.nats_url, unique_name) as bus:
        yield bus


async def _add(
    pool: asyncpg.Pool, subject: str, count: int, *, aggregate: str = "trip-1"
) -> list[str]:
    """``count`` events for one aggregate, versions 1..count, in one committed transaction."""
    async with asyncio.timeout(10), pool.acquire() as conn, conn.transaction():
        return [
            await add_event(
                conn,
                subject=subject,
                aggregate_id=aggregate,
                aggregate_version=version,
                payload=common_pb2.LatLng(lat=float(version), lng=1.5),
            )
            for version in range(1, count + 1)
        ]


class Running:
    """A relay task that tests start and stop."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(relay.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(10):
            await self.task


async def _wait_until_sent(pool: asyncpg.Pool, *, within_s: float = 20.0) -> None:
    async def all_sent() -> bool:
        return not await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

    await eventually(all_sent, timeout_s=within_s)


async def test_committed_events_are_published_once_each_with_their_envelope(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    subject = f"{bus.prefix}.trip.accepted"
    event_ids = await _add(pool, subject, 3)
    running = Running(OutboxRelay(pool, bus.js, schema=unique_name))
    try:
        msgs = await read_all(bus, subject, expect=3)
    finally:
        await running.close()

    envelopes = [decode_envelope(m.data) for m in msgs]
    assert [e.event_id for e in envelopes] == event_ids  # in order
    assert [m.headers and m.headers[MSG_ID_HEADER] for m in msgs] == event_ids
    assert [e.aggregate_version for e in envelopes] == [1, 2, 3]
    assert {e.aggregate_id for e in envelopes} == {"trip-1"}
    assert {e.type for e in envelopes} == {subject}
    assert envelopes[1].unpack(common_pb2.LatLng) == common_pb2.LatLng(lat=2.0, lng=1.5)
    assert running.relay.published == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_a_rolled_back_transaction_publishes_nothing(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    subject = f"{bus.prefix}.trip.accepted"

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with asyncio.timeout(10), pool.acquire() as conn, conn.transaction():
            await add_event(
                conn,
                subject=subject,
                aggregate_id="rolled-back",
                aggregate_version=1,
                payload=common_pb2.LatLng(),
            )
            raise Abort
    marker = await _add(pool, subject, 1, aggregate="marker")
    running = Running(OutboxRelay(pool, bus.js, schema=unique_name))
    try:
        msgs = await read_all(bus, subject, expect=1)
    finally:
        await running.close()

    assert [decode_envelope(m.data).event_id for m in msgs] == marker


async def test_add_event_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with asyncio.timeout(10), pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await add_event(
                conn,
                subject="x.y",
                aggregate_id="a",
                aggregate_version=1,
                payload=common_pb2.LatLng(),
            )


async def test_a_commit_wakes_the_relay_without_waiting_for_the_poll(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    subject = f"{bus.prefix}.trip.accepted"
    running = Running(OutboxRelay(pool, bus.js, schema=unique_name, poll_interval_s=60.0))

    async def published(count: int) -> bool:
        return await stored(bus, subject) >= count

    try:
        # A first event, published by the relay's first round (the relay LISTENs before it):
        # from then on the relay waits 60 s for its next poll, or for a NOTIFY.
        await _add(pool, subject, 1, aggregate="trip-0")
        await eventually(lambda: published(1), timeout_s=20)
        await _add(pool, subject, 1)
        await eventually(lambda: published(2), timeout_s=3)
    finally:
        await running.close()


async def _consume_all(
    bus: Bus, durable: str, expect: int, *, within_s: float = 30.0
) -> Counter[str]:
    """Event ids delivered to a durable consumer (acked), counted, once ``expect`` arrived."""
    seen: Counter[str] = Counter()
    stop = asyncio.Event()

    async def handler(envelope: Envelope, msg: Msg) -> None:
        seen[envelope.event_id] += 1

    task = asyncio.create_task(
        run_consumer(
            bus.js,
            stream=bus.stream,
            durable=durable,
            filter_subjects=[f"{bus.prefix}.>"],
            handler=handler,
            stop=stop,
            fetch_timeout_s=0.25,
        )
    )
    try:
        await eventually(lambda: sum(seen.values()) >= expect, timeout_s=within_s)
        await asyncio.sleep(0.5)  # room for any duplicate to show up
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    return seen


async def test_a_relay_killed_mid_way_and_restarted_delivers_every_event_exactly_once(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    subject = f"{bus.prefix}.trip.accepted"
    event_ids = await _add(pool, subject, 600)
    # One relay killed (cancelled) in the middle of its batches.
    first = OutboxRelay(pool, bus.js, schema=unique_name, batch_size=50)
    task = asyncio.create_task(first.run(asyncio.Event()))

    async def mid_way() -> bool:
        return await stored(bus, subject) >= 150

    await eventually(mid_way, timeout_s=20, every_s=0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    # And the worst moment for a kill: after JetStream acked, before the rows were marked
    # sent. The next 20 unsent rows are in the stream but not marked in the outbox.
    rows = await pool.fetch("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 20")
    assert len(rows) == 20
    for row in rows:
        envelope = Envelope(
            event_id=row["event_id"],
            occurred_at=row["occurred_at"],
            aggregate_id=row["aggregate_id"],
            aggregate_version=row["aggregate_version"],
            type=row["subject"],
            payload=bytes(row["payload"]),
        )
        async with asyncio.timeout(5):
            await publish_envelope(bus.js, envelope)

    restarted = Running(OutboxRelay(pool, bus.js, schema=unique_name, batch_size=50))
    try:
        await _wait_until_sent(pool)
    finally:
        await restarted.close()
    seen = await _consume_all(bus, f"{unique_name}_consumer", expect=600)

    assert set(seen) == set(event_ids)
    assert set(seen.values()) == {1}
    assert await stored(bus, subject) == 600
    assert restarted.relay.duplicates >= 20  # republished, and dropped by JetStream


async def test_two_relays_at_once_publish_each_event_once(
    infra: InfraUrls, pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    subject = f"{bus.prefix}.trip.accepted"
    event_ids: list[str] = []
    for aggregate in range(5):
        event_ids += await _add(pool, subject, 60, aggregate=f"trip-{aggregate}")
    other_pool = await create_pool(infra.postgres_dsn, schema=unique_name, max_size=4)
    try:
        relays = [
            Running(OutboxRelay(pool, bus.js, schema=unique_name, batch_size=20)),
            Running(OutboxRelay(other_pool, bus.js, schema=unique_name, batch_size=20)),
        ]
        event_ids += await _add(pool, subject, 40, aggregate="late")  # while both run
        try:
            await _wait_until_sent(pool)
        finally:
            for running in relays:
                await running.close()
    finally:
        await other_pool.close()
    seen = await _consume_all(bus, f"{unique_name}_consumer", expect=340)

    assert sum(r.relay.published for r in relays) == 340
    assert [r.relay.duplicates for r in relays] == [0, 0]
    assert set(seen) == set(event_ids) and set(seen.values()) == {1}


async def test_sent_rows_are_pruned_after_the_retention(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    await _add(pool, f"{bus.prefix}.trip.accepted", 5)
    running = Running(
        OutboxRelay(
            pool,
            bus.js,
            schema=unique_name,
            retention_s=0.0,
            prune_interval_s=0.0,
            poll_interval_s=0.05,
        )
    )
    try:

        async def pruned() -> bool:
            return not await pool.fetchval("SELECT count(*) FROM outbox")

        await eventually(pruned)
    finally:
        await running.close()
    assert running.relay.published == 5


async def test_flushed_returns_once_what_was_committed_before_it_is_published(
    pool: asyncpg.Pool, bus: Bus, unique_name: str
) -> None:
    # A relay that polls only once a minute: flushed() must wake it, not wait for the poll.
    running = Running(OutboxRelay(pool, bus.js, schema=unique_name, poll_interval_s=60.0))
    try:
        subject = f"{bus.prefix}.trip.offered"
        await _add(pool, subject, 5)
        async with asyncio.timeout(20):
            await running.relay.flushed()
        # Published, not merely about to be: the rows are marked sent and the stream has them.
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
        assert running.relay.published == 5
        assert len(await read_all(bus, subject, expect=5)) == 5
        # With nothing left to publish it still returns, after one empty round.
        async with asyncio.timeout(20):
            await running.relay.flushed()
    finally:
        await running.close()


async def test_flushed_returns_after_a_failed_round_too(
    pool: asyncpg.Pool, bus: Bus, infra: InfraUrls, unique_name: str
) -> None:
    # The relay's NATS connection is closed: every round fails, and flushed() returns after
    # a failed round (its caller's deadline is for a relay that is not running at all),
    # leaving the rows unsent for the rounds after.
    async with asyncio.timeout(10):
        closed = await connect(infra.nats_url, name=f"test-{unique_name}-closed")
        await closed.close()
    running = Running(
        OutboxRelay(pool, closed.jetstream(), schema=unique_name, error_backoff_s=0.05)
    )
    try:
        await _add(pool, f"{bus.prefix}.trip.offered", 2)
        async with asyncio.timeout(20):
            await running.relay.flushed()
        assert running.relay.failed_rounds >= 1
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2
    finally:
        await running.close()
