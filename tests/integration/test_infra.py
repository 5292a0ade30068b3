"""The embedded servers are real and answer real clients."""

from __future__ import annotations

import asyncpg
import nats
import redis.asyncio as aioredis

from rideshare.settings import InfraUrls


async def test_redis_serves_geosearch(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.geoadd("cars", [13.40, 52.52, "near", 13.50, 52.60, "far"])
        found = await client.geosearch(
            "cars", longitude=13.40, latitude=52.52, radius=2, unit="km", sort="ASC"
        )
    finally:
        await client.aclose()
    assert found == ["near"]


async def test_postgres_answers_with_a_password(infra: InfraUrls) -> None:
    conn = await asyncpg.connect(infra.postgres_dsn, timeout=5)
    try:
        assert await conn.fetchval("SELECT current_database()") == "rideshare"
    finally:
        await conn.close()


async def test_postgres_refuses_a_wrong_password(infra: InfraUrls) -> None:
    wrong = infra.postgres_dsn.replace("@", "x@", 1)
    try:
        conn = await asyncpg.connect(wrong, timeout=5)
    except asyncpg.InvalidPasswordError:
        return
    await conn.close()
    raise AssertionError("a wrong password was accepted")


async def test_nats_has_jetstream(infra: InfraUrls) -> None:
    nc = await nats.connect(infra.nats_url, connect_timeout=2)
    try:
        info = await nc.jetstream().account_info()
    finally:
        await nc.close()
    assert info.limits is not None
