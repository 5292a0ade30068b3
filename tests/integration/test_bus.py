from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from protos.common.v1 import common_pb2
from rideshare.bus import (
    DEADLETTER_DELIVERIES_HEADER,
    DEADLETTER_ERROR_HEADER,
    DEADLETTER_SUBJECT_HEADER,
    DurableConsumer,
    Envelope,
    claim_event,
    decode_envelope,
    ensure_stream,
    make_envelope,
    publish_envelope,
)
from rideshare.migrations import apply_migrations
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.plumbing import Bus, read_all, schema_pool, scoped_stream

Handler = Callable[[Envelope, Msg], Awaitable[None]]


@pytest.fixture
async def bus(infra: InfraUrls, unique_name: str) -> AsyncIterator[Bus]:
    async with scoped_stream(infra.nats_url, unique_name) as bus:
        yield bus


@pytest.fixture
async def pool(infra: InfraUrls, unique_name: str) -> AsyncIterator[asyncpg.Pool]:
    async with schema_pool(infra.postgres_dsn, unique_name) as pool:
        async with asyncio.timeout(20):
            await apply_migrations(pool, schema=unique_name, directory=None)
            await pool.execute("CREATE TABLE effect (event_id text NOT NULL)")
        yield pool


async def _publish(bus: Bus, *aggregates: str, kind: str = "trip.accepted") -> list[Envelope]:
    envelopes = [
        make_envelope(
            common_pb2.LatLng(lat=1.0),
            type=f"{bus.prefix}.{kind}",
            aggregate_id=aggregate,
            aggregate_version=1,
        )
        for aggregate in aggregates
    ]
    async with asyncio.timeout(10):
        for envelope in envelopes:
            await publish_envelope(bus.js, envelope)
    return envelopes


class Consumers:
    """Consumer copies running until the test ends."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, consumer: DurableConsumer) -> DurableConsumer:
        self.tasks.append(asyncio.create_task(consumer.run(self.stop)))
        return consumer

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*self.tasks)


@pytest.fixture
async def consumers() -> AsyncIterator[Consumers]:
    running = Consumers()
    try:
        yield running
    finally:
        await running.close()


def _consumer(
    bus: Bus, handler: Handler, *, durable: str = "worker", **options: object
) -> DurableConsumer:
    return DurableConsumer(
        bus.js,
        stream=bus.stream,
        durable=f"{bus.prefix}_{durable}",
        filter_subjects=[f"{bus.prefix}.trip.>"],
        handler=handler,
        deadletter=f"{bus.prefix}.deadletter.{durable}",
        fetch_timeout_s=0.25,
        **options,  # type: ignore[arg-type]
    )


async def test_ensure_stream_is_idempotent_and_updates_subjects(bus: Bus) -> None:
    async with asyncio.timeout(10):
        await ensure_stream(bus.js, name=bus.stream, subjects=[f"{bus.prefix}.>"])
        await ensure_stream(
            bus.js, name=bus.stream, subjects=[f"{bus.prefix}.>"], duplicate_window_s=30
        )
        info = await bus.js.stream_info(bus.stream)

    assert info.config.subjects == [f"{bus.prefix}.>"]
    assert info.config.duplicate_window == 30


async def test_a_failed_message_is_redelivered_and_then_acked(
    bus: Bus, consumers: Consumers
) -> None:
    deliveries: list[int] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) == 1:
            raise RuntimeError("transient")

    consumer = consumers.start(_consumer(bus, handler, backoff_s=[0.1]))
    await _publish(bus, "trip-1")
    await eventually(lambda: consumer.stats.acked == 1)

    assert deliveries == [1, 2]
    assert consumer.stats.naked == 1


async def test_a_message_left_unacked_is_redelivered_after_ack_wait(
    bus: Bus, consumers: Consumers
) -> None:
    durable = f"{bus.prefix}_worker"
    # A copy that takes the message and dies without acking.
    async with asyncio.timeout(10):
        await bus.js.add_consumer(
            bus.stream,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=1.0,
                filter_subject=f"{bus.prefix}.trip.>",
            ),
        )
        sub = await bus.js.pull_subscribe_bind(durable=durable, stream=bus.stream)
        [published] = await _publish(bus, "trip-1")
        [taken] = await sub.fetch(1, timeout=5)
        await sub.unsubscribe()
    assert decode_envelope(taken.data).event_id == published.event_id
    received: list[tuple[str, int]] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        received.append((envelope.event_id, msg.metadata.num_delivered))

    consumers.start(_consumer(bus, handler, ack_wait_s=1.0))
    await eventually(lambda: bool(received))

    assert received == [(published.event_id, 2)]


async def test_claim_event_makes_a_redelivered_event_a_no_op(
    bus: Bus, pool: asyncpg.Pool, consumers: Consumers
) -> None:
    claims: list[bool] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        async with pool.acquire() as conn, conn.transaction():
            claimed = await claim_event(conn, consumer="worker", event_id=envelope.event_id)
            claims.append(claimed)
            if claimed:
                await conn.execute("INSERT INTO effect VALUES ($1)", envelope.event_id)
        if len(claims) == 1:
            # The effect committed but the ack is lost: the message comes back.
            raise ConnectionError("crashed before the ack")

    consumer = consumers.start(_consumer(bus, handler, backoff_s=[0.1]))
    [envelope] = await _publish(bus, "trip-1")
    await eventually(lambda: consumer.stats.acked == 1)

    assert claims == [True, False]
    assert await pool.fetchval("SELECT count(*) FROM effect") == 1
    assert await pool.fetchval("SELECT event_id FROM effect") == envelope.event_id


async def test_claim_event_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with asyncio.timeout(10), pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await claim_event(conn, consumer="worker", event_id="e1")


async def test_a_poison_message_goes_to_deadletter_and_does_not_block_the_next(
    bus: Bus, consumers: Consumers
) -> None:
    handled: list[str] = []
    poison_attempts = 0

    async def handler(envelope: Envelope, msg: Msg) -> None:
        nonlocal poison_attempts
        if envelope.aggregate_id == "poison":
            poison_attempts += 1
            raise ValueError("cannot handle this one")
        handled.append(envelope.aggregate_id)

    consumer = consumers.start(_consumer(bus, handler, max_deliver=3, backoff_s=[0.3]))
    poison, _ = await _publish(bus, "poison", "good")
    await eventually(lambda: handled == ["good"])
    assert consumer.stats.deadlettered == 0  # the good one went past the poison one
    await eventually(lambda: consumer.stats.deadlettered == 1)
    [dead] = await read_all(bus, f"{bus.prefix}.deadletter.worker", expect=1)
    await asyncio.sleep(1.0)  # no further deliveries after the dead letter

    assert poison_attempts == 3
    assert decode_envelope(dead.data) == poison
    assert dead.headers is not None
    assert dead.headers[DEADLETTER_ERROR_HEADER] == "ValueError: cannot handle this one"
    assert dead.headers[DEADLETTER_SUBJECT_HEADER] == f"{bus.prefix}.trip.accepted"
    assert dead.headers[DEADLETTER_DELIVERIES_HEADER] == "3"
    assert poison_attempts == 3 and handled == ["good"]


async def test_bytes_that_are_not_an_envelope_go_to_deadletter_at_once(
    bus: Bus, consumers: Consumers
) -> None:
    calls: list[str] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        calls.append(envelope.aggregate_id)

    consumer = consumers.start(_consumer(bus, handler))
    async with asyncio.timeout(5):
        await bus.js.publish(f"{bus.prefix}.trip.accepted", b"\xff\xff not protobuf")
    await eventually(lambda: consumer.stats.deadlettered == 1)
    [dead] = await read_all(bus, f"{bus.prefix}.deadletter.worker", expect=1)

    assert dead.data == b"\xff\xff not protobuf"
    assert calls == []


async def test_two_copies_with_one_durable_split_the_work_without_overlap(
    bus: Bus, consumers: Consumers
) -> None:
    seen: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}

    def handler_for(copy: str) -> Handler:
        async def handler(envelope: Envelope, msg: Msg) -> None:
            seen[copy][envelope.event_id] += 1
            await asyncio.sleep(0.002)  # some work, so both copies get a share

        return handler

    for copy in seen:
        consumers.start(_consumer(bus, handler_for(copy), batch=10))
    envelopes = await _publish(bus, *(f"trip-{i}" for i in range(300)))
    await eventually(lambda: sum(len(c) for c in seen.values()) == 300, timeout_s=20)
    await asyncio.sleep(0.5)

    both = seen["a"] + seen["b"]
    assert set(both) == {e.event_id for e in envelopes}
    assert set(both.values()) == {1}  # no event handled twice
    assert seen["a"] and seen["b"]


async def test_live_state_consumer_with_an_old_config_is_recreated_at_the_stream_end(
    bus: Bus,
) -> None:
    await _publish(bus, "old")  # history the live-state consumer must not replay
    await bus.js.add_consumer(
        bus.stream,
        ConsumerConfig(
            durable_name="live", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{bus.prefix}.>"
        ),
    )
    seen: list[str] = []

    async def handler(envelope: Envelope, _msg: Msg) -> None:
        seen.append(envelope.aggregate_id)

    consumer = DurableConsumer(
        bus.js,
        stream=bus.stream,
        durable="live",
        filter_subjects=[f"{bus.prefix}.>"],
        handler=handler,
        only_new=True,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def listening() -> bool:
            info = await bus.js.consumer_info(bus.stream, "live")
            return bool(info.config.deliver_policy == DeliverPolicy.NEW)

        await eventually(listening)
        await _publish(bus, "new")
        await eventually(lambda: seen == ["new"])
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_consumer_whose_config_cannot_be_updated_fails_with_a_clear_message(
    bus: Bus,
) -> None:
    await bus.js.add_consumer(
        bus.stream,
        ConsumerConfig(
            durable_name="history",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=f"{bus.prefix}.>",
            deliver_policy=DeliverPolicy.NEW,
        ),
    )

    async def handler(_envelope: Envelope, _msg: Msg) -> None:
        return None

    consumer = DurableConsumer(
        bus.js,
        stream=bus.stream,
        durable="history",
        filter_subjects=[f"{bus.prefix}.>"],
        handler=handler,
    )
    with pytest.raises(RuntimeError, match="cannot be updated"):
        async with asyncio.timeout(10):
            await consumer.run(asyncio.Event())
