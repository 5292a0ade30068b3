"""The project's pool over a DSN that lists several hosts with
``target_session_attrs=read-write``, as a primary + standby deployment gives it: asyncpg tries
the hosts in order and keeps the first that takes writes, so a host that is down (here: a
port nobody listens on, before the real server) costs one refused connect, not an error."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from rideshare.db import create_pool, quote_schema
from rideshare.infra import free_port
from rideshare.migrations import apply_migrations
from rideshare.settings import InfraUrls


def with_dead_host_first(dsn: str) -> str:
    parts = urlsplit(dsn)
    user, _, address = parts.netloc.rpartition("@")
    netloc = f"{user}@127.0.0.1:{free_port()},{address}"
    query = "&".join(q for q in (parts.query, "target_session_attrs=read-write") if q)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def test_a_pool_over_two_hosts_writes_to_the_one_that_answers(
    infra: InfraUrls, unique_name: str
) -> None:
    dsn = with_dead_host_first(infra.postgres_dsn)
    assert dsn.count(",") == 1 and "target_session_attrs=read-write" in dsn
    async with asyncio.timeout(30):
        pool = await create_pool(dsn, schema=unique_name, max_size=2)
    try:
        async with asyncio.timeout(30):
            await apply_migrations(pool, schema=unique_name, directory=None)
            await pool.execute("CREATE TABLE written (n int)")
            await pool.execute("INSERT INTO written VALUES (1)")
            assert await pool.fetchval("SELECT sum(n) FROM written") == 1
            assert await pool.fetchval("SHOW transaction_read_only") == "off"
    finally:
        async with asyncio.timeout(30):
            await pool.execute(f"DROP SCHEMA {quote_schema(unique_name)} CASCADE")
            await pool.close()
