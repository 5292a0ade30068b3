"""Helpers for the shared-plumbing tests: a schema-scoped pool and a per-test stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from rideshare.bus import connect, ensure_stream
from rideshare.db import create_pool, quote_schema
from tests.helpers import eventually


@asynccontextmanager
async def schema_pool(dsn: str, schema: str, *, max_size: int = 5) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh schema, dropped with everything in it afterwards."""
    async with asyncio.timeout(10):
        pool = await create_pool(dsn, schema=schema, max_size=max_size)
    try:
        yield pool
    finally:
        async with asyncio.timeout(10):
            await pool.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")
            await pool.close()


@dataclass(frozen=True)
class Bus:
    """A connection with a stream of its own over ``<prefix>.>``."""

    nc: NATS
    js: JetStreamContext
    stream: str
    prefix: str


@asynccontextmanager
async def scoped_stream(url: str, name: str) -> AsyncIterator[Bus]:
    """A NATS connection and a stream named ``name`` over ``<name>.>``, deleted afterwards."""
    async with asyncio.timeout(10):
        nc = await connect(url, name=f"test-{name}")
    try:
        js = nc.jetstream(timeout=5)
        async with asyncio.timeout(10):
            await ensure_stream(js, name=name, subjects=[f"{name}.>"])
        try:
            yield Bus(nc=nc, js=js, stream=name, prefix=name)
        finally:
            async with asyncio.timeout(10):
                await js.delete_stream(name)
    finally:
        async with asyncio.timeout(10):
            await nc.close()


async def read_all(bus: Bus, subject: str, *, expect: int, within_s: float = 10.0) -> list[Msg]:
    """Every message stored on ``subject``, read with an ephemeral consumer once the stream
    holds at least ``expect`` of them (and a little longer, to catch extra ones)."""

    async def enough() -> bool:
        return await stored(bus, subject) >= expect

    await eventually(enough, timeout_s=within_s)
    await asyncio.sleep(0.2)
    total = await stored(bus, subject)
    sub = await bus.js.pull_subscribe(
        subject,
        stream=bus.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=5.0),
    )
    msgs: list[Msg] = []
    try:
        async with asyncio.timeout(within_s):
            while len(msgs) < total:
                msgs += await sub.fetch(min(total - len(msgs), 256), timeout=2)
    finally:
        await sub.unsubscribe()
    return msgs


async def stored(bus: Bus, subject: str) -> int:
    """How many messages the stream holds on ``subject``."""
    info = await bus.js.stream_info(bus.stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())
