"""Location and the edge's Redis parts on a real Valkey Cluster (six nodes, 3 masters), through
the one client factory and as the services' own ACL users."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from edge.errors import ApiError
from edge.idempotency import IdempotencyStore, StoredResponse
from edge.logins import LoginGuard
from edge.ratelimit import Bucket, RateLimiter
from edge.settings import LoginLimits
from location.domain import Availability
from location.store import LocationStore, shard_of
from protos.location.v1 import location_pb2 as pb
from rideshare.infra_users import VALKEY_USERS
from rideshare.redis_client import open_redis
from rideshare.settings import InfraUrls
from rideshare.valkey_cluster import ValkeyCluster
from tests.helpers import eventually
from tests.integration.test_location import (
    BERLIN,
    STANDARD,
    Stub,
    location_service,
    nearest_ids,
    now_ms,
    update,
)

SHARDS = 6
MUNICH = (48.1372, 11.5756)  # away from the other tests' drivers


def ids_in_shards(count: int) -> list[str]:
    """``count`` driver ids, each in a shard of its own."""
    found: dict[int, str] = {}
    while len(found) < count:
        driver_id = f"d-{uuid.uuid4().hex[:12]}"
        found.setdefault(shard_of(driver_id, SHARDS), driver_id)
    return list(found.values())


@contextlib.asynccontextmanager
async def cluster_client(cluster: ValkeyCluster, user: str) -> AsyncIterator[RedisCluster]:
    client = open_redis(cluster.url(user), timeout_s=5.0)
    assert isinstance(client, RedisCluster)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def cluster_location(
    infra: InfraUrls, cluster: ValkeyCluster
) -> AsyncIterator[tuple[Stub, LocationStore]]:
    """The location service on the cluster as its own user, and a store beside it that
    writes what an event would."""
    async with (
        location_service(infra, cluster.url("location"), shards=SHARDS) as stub,
        cluster_client(cluster, "location") as client,
    ):
        yield stub, LocationStore(client, shards=SHARDS)


async def test_every_node_knows_every_service_user(valkey_cluster: ValkeyCluster) -> None:
    for user in VALKEY_USERS:
        for host, port in valkey_cluster.addresses:
            async with aioredis.Redis(
                host=host,
                port=port,
                username=user,
                password=valkey_cluster.passwords[user],
                socket_timeout=5,
            ) as node:
                assert await node.ping()


async def test_calls_beyond_the_pool_wait_for_a_connection_as_on_one_server(
    valkey_cluster: ValkeyCluster,
) -> None:
    client = open_redis(valkey_cluster.url("location"), max_connections=4, timeout_s=10.0)
    try:
        prefix = f"loc:{uuid.uuid4().hex[:8]}:"
        # A new client, 200 calls side by side over three masters: none is refused.
        await asyncio.gather(*(client.set(f"{prefix}{n}", n) for n in range(200)))
        values = await asyncio.gather(*(client.get(f"{prefix}{n}") for n in range(200)))
        assert values == [str(n).encode() for n in range(200)]
    finally:
        await client.aclose()


async def test_a_search_finds_drivers_of_every_shard_merged_by_distance(
    infra: InfraUrls, valkey_cluster: ValkeyCluster
) -> None:
    drivers = ids_in_shards(4)
    async with cluster_location(infra, valkey_cluster) as (stub, index):
        for n, driver_id in enumerate(drivers):
            await index.driver_online(driver_id, STANDARD, at_ms=now_ms())
            # Farther the later: 0.002 degrees of latitude (~220 m) apart.
            lat = BERLIN[0] + 0.002 * (n + 1) * (-1 if n % 2 else 1)
            await stub.ReportPosition(update(driver_id, lat, BERLIN[1]), timeout=5)

        assert await nearest_ids(stub, *BERLIN) == drivers
        area = await stub.DriversInArea(
            pb.DriversInAreaRequest(
                min_lat=BERLIN[0] - 0.02,
                min_lng=BERLIN[1] - 0.02,
                max_lat=BERLIN[0] + 0.02,
                max_lng=BERLIN[1] + 0.02,
                limit=100,
            ),
            timeout=5,
        )
        assert set(drivers) <= {d.driver_id for d in area.drivers}

        # A hold on one shard's driver takes them out of the merged search, and only them.
        await stub.ReserveDriver(
            pb.ReserveDriverRequest(driver_id=drivers[1], trip_id="t-1"), timeout=5
        )
        assert await nearest_ids(stub, *BERLIN) == [drivers[0], *drivers[2:]]
        assert await index.free(drivers[1], "t-1", at_ms=now_ms())
        assert await nearest_ids(stub, *BERLIN) == drivers


async def test_a_rebuild_marks_every_shard_and_a_lost_shard_is_noticed(
    valkey_cluster: ValkeyCluster,
) -> None:
    async with cluster_client(valkey_cluster, "location") as client:
        index = LocationStore(client, prefix=f"loc:{uuid.uuid4().hex[:8]}:", shards=SHARDS)
        assert not await index.index_built()
        assert await index.begin_rebuild("r1", lock_ms=10_000)
        assert not await index.begin_rebuild("r2", lock_ms=10_000)
        assert await index.extend_rebuild("r1", lock_ms=10_000)
        assert await index.finish_rebuild("r1", info="{}")
        assert await index.index_built()


async def test_the_edge_limits_lockouts_and_idempotency_work_on_a_cluster(
    valkey_cluster: ValkeyCluster,
) -> None:
    async with cluster_client(valkey_cluster, "edge") as client:
        limiter = RateLimiter(client)
        ip, user = f"ip-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
        buckets = [Bucket(f"ip:{ip}", 0.01, 2), Bucket(f"sub:{user}", 0.01, 5)]
        assert await limiter.take(buckets) == 0.0
        assert await limiter.take(buckets) == 0.0
        assert await limiter.take(buckets) > 0.0  # the IP's bucket is empty: refused

        guard = LoginGuard(client, limiter, LoginLimits(lockout_failures=2))
        phone = f"+4917{uuid.uuid4().int % 10**8:08d}"
        await guard.admit_login("rider", phone, "client-1")
        await guard.login_failed("rider", phone, "client-1")
        await guard.login_failed("rider", phone, "client-1")
        with pytest.raises(ApiError) as refused:
            await guard.admit_login("rider", phone, "client-2")
        assert refused.value.status == 429
        await guard.login_succeeded("rider", phone)  # DEL of both keys, one slot
        await guard.admit_login("rider", phone, "client-3")

        idempotency = IdempotencyStore(client)
        created: list[int] = []

        async def create() -> StoredResponse:
            created.append(1)
            return StoredResponse(201, {"id": len(created)})

        key = uuid.uuid4().hex
        first = await idempotency.run(scope="trips", key=key, body={"a": 1}, create=create)
        again = await idempotency.run(scope="trips", key=key, body={"a": 1}, create=create)
        assert first.body == again.body == {"id": 1}
        assert again.replayed
        assert len(created) == 1


async def test_location_keeps_serving_after_a_master_dies(
    infra: InfraUrls, valkey_cluster: ValkeyCluster
) -> None:
    drivers = ids_in_shards(SHARDS)
    async with cluster_location(infra, valkey_cluster) as (stub, index):
        for n, driver_id in enumerate(drivers):
            await index.driver_online(driver_id, STANDARD, at_ms=now_ms())
            lat = MUNICH[0] + 0.001 * (n + 1)
            await stub.ReportPosition(update(driver_id, lat, MUNICH[1]), timeout=5)
        assert await nearest_ids(stub, *MUNICH) == drivers
        victim = drivers[0]
        killed_at = time.monotonic()
        await valkey_cluster.kill_master_of(f"loc:{{{shard_of(victim, SHARDS)}}}:seen")

        async def serving_again() -> bool:
            try:
                await stub.ReportPosition(update(victim, MUNICH[0] + 0.0005, MUNICH[1]), timeout=5)
                return await nearest_ids(stub, *MUNICH) == drivers
            except grpc.aio.AioRpcError:
                return False

        await eventually(serving_again, timeout_s=60, every_s=0.2)
        print(f"location served again {time.monotonic() - killed_at:.1f} s after the kill")
        position = await index.get(victim)
        assert position is not None
        assert position.availability is Availability.AVAILABLE
        await valkey_cluster.wait_healthy()
