"""Copies of a consuming service share one durable JetStream consumer: each event is handled
by one copy; what a live copy is still working on stays with it past the ack wait, and what a
copy held unacked when it was killed (SIGKILL, a process of its own) is redelivered to another
copy once the ack wait has run out."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from protos.common.v1 import common_pb2
from rideshare.bus import DurableConsumer, Envelope, make_envelope, publish_envelope
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.plumbing import Bus, scoped_stream

ACK_WAIT_S = 3.0


@pytest.fixture
async def bus(infra: InfraUrls, unique_name: str) -> AsyncIterator[Bus]:
    async with scoped_stream(infra.nats_url, unique_name) as bus:
        yield bus


async def _publish(bus: Bus, *aggregates: str) -> list[Envelope]:
    envelopes = [
        make_envelope(
            common_pb2.LatLng(lat=1.0),
            type=f"{bus.prefix}.trip.accepted",
            aggregate_id=aggregate,
            aggregate_version=1,
        )
        for aggregate in aggregates
    ]
    async with asyncio.timeout(20):
        for envelope in envelopes:
            await publish_envelope(bus.js, envelope)
    return envelopes


async def test_an_event_a_killed_copy_held_unacked_is_handled_by_the_other_copy(
    bus: Bus, infra: InfraUrls
) -> None:
    durable = f"{bus.prefix}_shared"
    subject = f"{bus.prefix}.trip.>"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.consumer_copy",
        infra.nats_url,
        bus.stream,
        durable,
        subject,
        str(ACK_WAIT_S),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    by_child: Counter[str] = Counter()
    held: list[str] = []
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:

        async def read_child() -> None:
            assert child.stdout is not None
            async for line in child.stdout:
                word, _, event_id = line.decode().strip().partition(" ")
                if word == "acked":
                    by_child[event_id] += 1
                elif word == "holding":
                    held.append(event_id)

        async with asyncio.timeout(60):
            assert (await child.stdout.readline()).strip() == b"ready"
        reader = asyncio.create_task(read_child())
        await eventually(lambda: _exists(bus, durable), timeout_s=60, every_s=0.1)
        # The child alone: it handles these, then takes the held event and never acks it.
        first = await _publish(bus, *(f"trip-{i}" for i in range(50)))
        [hold] = await _publish(bus, "hold")
        await eventually(lambda: hold.event_id in held, timeout_s=60)
        assert set(by_child) == {e.event_id for e in first}

        by_here: Counter[str] = Counter()
        redelivered: dict[str, int] = {}

        async def handler(envelope: Envelope, msg: Msg) -> None:
            by_here[envelope.event_id] += 1
            if msg.metadata.num_delivered > 1:
                redelivered[envelope.event_id] = msg.metadata.num_delivered

        # A second copy of the same durable consumer, in this process.
        here = DurableConsumer(
            bus.js,
            stream=bus.stream,
            durable=durable,
            filter_subjects=[subject],
            handler=handler,
            ack_wait_s=ACK_WAIT_S,
            batch=10,
            fetch_timeout_s=0.25,
        )
        task = asyncio.create_task(here.run(stop))
        middle = await _publish(bus, *(f"trip-more-{i}" for i in range(50)))
        await eventually(lambda: set(by_here) >= {e.event_id for e in middle}, timeout_s=60)
        # Alive, the child keeps the held event in progress: two ack waits pass and it is
        # not handed to the copy here (absence takes a wait to show).
        await asyncio.sleep(2 * ACK_WAIT_S)
        assert hold.event_id not in by_here

        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            await child.wait()
            await reader
        killed_at = asyncio.get_running_loop().time()
        await eventually(lambda: hold.event_id in by_here, timeout_s=ACK_WAIT_S + 60)
        took = asyncio.get_running_loop().time() - killed_at
        print(f"\nheld event handled by the other copy {took:.2f}s after the kill")

        last = await _publish(bus, *(f"after-{i}" for i in range(20)))
        expected = {e.event_id for e in [*first, hold, *middle, *last]}
        await eventually(lambda: set(by_child) | set(by_here) >= expected, timeout_s=60)
        both = by_child + by_here
        assert set(both) == expected
        # Acked by the child (confirmed by the server) is never handled again here; the one
        # event handled twice is the one the child held, and it came here as a redelivery.
        assert not set(by_child) & set(by_here)
        assert set(both.values()) == {1}
        assert hold.event_id in redelivered
    finally:
        stop.set()
        if child.returncode is None:
            child.kill()
            await child.wait()
        if task is not None:
            async with asyncio.timeout(10):
                await task


async def _exists(bus: Bus, durable: str) -> bool:
    try:
        await bus.js.consumer_info(bus.stream, durable)
    except Exception:
        return False
    return True
