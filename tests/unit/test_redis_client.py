"""Which client a ``RIDESHARE_REDIS_URL`` gives, and which shard holds a driver. Building a
client opens no connection, so nothing here touches the network."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from location.store import shard_of, shard_prefix
from rideshare.redis_client import is_cluster_url, open_redis


async def test_a_plain_url_gives_one_server_client() -> None:
    client = open_redis("redis://location:secret@127.0.0.1:6379/2")
    try:
        assert isinstance(client, aioredis.Redis)
        assert not is_cluster_url("redis://127.0.0.1:6379/0")
    finally:
        await client.aclose()


async def test_a_cluster_url_gives_a_cluster_client_with_every_listed_node() -> None:
    client = open_redis("redis+cluster://location:s%40cret@127.0.0.1:7000,127.0.0.1:7001/")
    try:
        assert isinstance(client, RedisCluster)
        assert {n.name for n in client.nodes_manager.startup_nodes.values()} == {
            "127.0.0.1:7000",
            "127.0.0.1:7001",
        }
        kwargs = client.get_connection_kwargs()
        assert (kwargs["username"], kwargs["password"]) == ("location", "s@cret")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:7000/3",  # a cluster has database 0 only
        "redis+cluster://127.0.0.1/",
        "redis+cluster://127.0.0.1:7000,:7001/",
    ],
)
def test_a_bad_cluster_url_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis\+cluster://"):
        open_redis(url)


def test_a_driver_keeps_one_shard_and_drivers_spread_over_all() -> None:
    ids = [f"d-{n:06d}" for n in range(4_000)]
    assert all(shard_of(i, 1) == 0 for i in ids)
    counts = [0] * 8
    for driver_id in ids:
        assert shard_of(driver_id, 8) == shard_of(driver_id, 8)
        counts[shard_of(driver_id, 8)] += 1
    assert min(counts) > 400  # 500 each on average
    assert shard_prefix("loc:", 3) == "loc:{3}:"
