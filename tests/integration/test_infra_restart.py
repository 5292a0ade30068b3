"""The embedded servers die for real (SIGKILL) and come back on the same port and data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket

import asyncpg
import httpx
import nats
import pytest

from rideshare.infra import LOCALSTRIPE_API_KEY, EmbeddedInfra, free_port, port_is_free
from rideshare.runtime import open_redis
from rideshare.settings import INFRA_FILE, configured_ports
from tests.helpers import eventually


async def kill(embedded: EmbeddedInfra, name: str) -> None:
    """SIGKILL the server and wait until the infra sees it dead."""
    os.kill(embedded.pid(name), signal.SIGKILL)
    await eventually(lambda: name in embedded.dead(), timeout_s=30)


def test_free_ports_avoid_the_configured_service_ports() -> None:
    reserved = configured_ports({"RIDESHARE_TRIP_PORT": "40123"})
    assert {50051, 50052, 40123, 50054, 50055, 8080} == reserved
    taken = [free_port(exclude=reserved) for _ in range(200)]
    assert not reserved & set(taken)


async def test_a_killed_postgres_comes_back_with_its_data(outage_infra: EmbeddedInfra) -> None:
    assert outage_infra.urls is not None
    dsn = outage_infra.urls.postgres_dsn
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # durable=False commits asynchronously: a crash may lose the last fraction of a
        # second. This session waits for its WAL write, which a killed server keeps.
        await conn.execute("SET synchronous_commit = on")
        await conn.execute("CREATE TABLE IF NOT EXISTS survives (v text)")
        await conn.execute("INSERT INTO survives VALUES ('kept')")
    finally:
        await conn.close()
    old_pid = outage_infra.pid("postgres")

    await kill(outage_infra, "postgres")
    assert outage_infra.dead() == ["postgres"]
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=2)
    await outage_infra.restart("postgres")

    assert outage_infra.dead() == []
    assert outage_infra.pid("postgres") != old_pid
    assert outage_infra.status()["postgres"]["alive"] is True
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        values = [r["v"] for r in await conn.fetch("SELECT v FROM survives")]
    finally:
        await conn.close()
    assert "kept" in values
    record = json.loads((outage_infra.data_dir / INFRA_FILE).read_text())
    assert record["pids"]["postgres"] == outage_infra.pid("postgres")


async def test_a_killed_nats_comes_back_with_its_jetstream_store(
    outage_infra: EmbeddedInfra, unique_name: str
) -> None:
    assert outage_infra.urls is not None
    url = outage_infra.urls.nats_url
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(name=unique_name, subjects=[f"{unique_name}.>"])
        await js.publish(f"{unique_name}.kept", b"kept")
    finally:
        await nc.close()

    await kill(outage_infra, "nats")
    assert outage_infra.dead() == ["nats"]
    await outage_infra.restart("nats")

    assert outage_infra.dead() == []
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream(timeout=5).stream_info(unique_name)
        await nc.jetstream(timeout=5).delete_stream(unique_name)
    finally:
        await nc.close()
    assert info.state.messages == 1
    record = json.loads((outage_infra.data_dir / INFRA_FILE).read_text())
    assert record["pids"]["nats"] == outage_infra.pid("nats")


async def test_a_killed_localstripe_comes_back_on_its_port_with_its_customers(
    outage_infra: EmbeddedInfra,
) -> None:
    assert outage_infra.urls is not None
    api = outage_infra.urls.stripe_api_base
    assert api.startswith("http://127.0.0.1:")
    # On 127.0.0.1 only: localstripe's own command line binds "::", which ::1 would reach.
    with socket.socket(socket.AF_INET6) as v6:
        assert v6.connect_ex(("::1", int(api.rsplit(":", 1)[1]))) != 0
    async with httpx.AsyncClient(base_url=api, auth=(LOCALSTRIPE_API_KEY, ""), timeout=10) as http:
        created = await http.post("/v1/customers", data={"email": "kept@example.com"})
        customer = created.json()["id"]
        # localstripe keeps its state in its own file, written once a second
        await asyncio.sleep(1.5)
        await kill(outage_infra, "stripe")
        await outage_infra.restart("stripe")
        assert outage_infra.dead() == []
        again = await http.get(f"/v1/customers/{customer}")
    assert again.status_code == 200, again.text
    assert again.json()["email"] == "kept@example.com"


async def test_a_killed_redis_comes_back_empty_on_its_port(outage_infra: EmbeddedInfra) -> None:
    assert outage_infra.urls is not None
    client = open_redis(outage_infra.urls.redis_url)
    try:
        await client.set("lost", "1")
        await kill(outage_infra, "redis")
        assert outage_infra.dead() == ["redis"]
        await outage_infra.restart("redis")
        assert outage_infra.dead() == []
        # The same client object reconnects to the same address; the cache is empty.
        assert await client.get("lost") is None
    finally:
        await client.aclose()


async def test_restart_waits_for_a_port_that_is_still_held(outage_infra: EmbeddedInfra) -> None:
    assert outage_infra.urls is not None
    port = int(outage_infra.urls.redis_url.rsplit(":", 1)[1].split("/")[0])
    log = outage_infra.data_dir / "logs" / "redis.log"
    refusals = log.read_text(errors="replace").count("Address already in use")
    await kill(outage_infra, "redis")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert not port_is_free(port)
        restarting = asyncio.ensure_future(outage_infra.restart("redis"))
        await eventually(
            lambda: log.read_text(errors="replace").count("Address already in use") > refusals,
            timeout_s=30,
        )
        assert not restarting.done()
    await restarting
    assert outage_infra.dead() == []
