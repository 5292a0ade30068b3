"""The one way the project opens Redis (Valkey): a plain client or a cluster client, chosen
by the URL in ``RIDESHARE_REDIS_URL``.

- ``redis://user:pass@host:port/db`` (or ``rediss://``, ``unix://``): one server, a
  ``redis.asyncio.Redis`` over a blocking pool.
- ``redis+cluster://user:pass@host:port,host:port,.../``: a Valkey (Redis) Cluster, a
  ``redis.asyncio.cluster.RedisCluster``. The hosts are the nodes it first asks for the slot
  map; one reachable node is enough, listing several survives the loss of one. A cluster
  has only database 0, so a path other than ``/`` or ``/0`` is refused.

Both give every call a deadline (``timeout_s``), retry a call once when it meets a dropped
connection (a restarted server, or a failed-over master: the cluster client then reloads
the slot map and follows the new master) and never retry a timeout. Code that uses the
client sees one interface (``RedisClient``); what differs is which keys one command or
script may touch on a cluster (one hash slot): see ``location/store.py`` for how the
location keys are tagged.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.maint_notifications import MaintNotificationsConfig

__all__ = ["CLUSTER_SCHEME", "RedisClient", "is_cluster_url", "open_redis"]

CLUSTER_SCHEME = "redis+cluster"

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def _retry() -> Retry:
    return Retry(
        ExponentialBackoff(cap=0.2, base=0.02),
        retries=1,
        supported_errors=(aioredis.ConnectionError,),
    )


def open_redis(url: str, *, max_connections: int = 64, timeout_s: float = 2.0) -> RedisClient:
    """A Redis client whose calls all have a deadline. On one server the pool blocks (up to
    ``timeout_s``) when every connection is busy, rather than failing a burst with "Too many
    connections"; on a cluster ``max_connections`` bounds the calls in flight, which wait
    the same way.

    A call that meets a dropped connection (Redis restarted: every pooled connection is
    dead) is tried once more on a fresh one, so the first call after a restart succeeds;
    timeouts are not retried, so an outage costs a caller at most one deadline."""
    if is_cluster_url(url):
        return _open_cluster(url, max_connections=max_connections, timeout_s=timeout_s)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=_retry(),
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


class _Cluster(RedisCluster):
    """RedisCluster as the plain client behaves: calls beyond ``max_connections`` wait (up to
    ``wait_s``) for one to finish instead of failing at once (redis-py's cluster pool does
    not block), and the first calls wait for the slot map before any opens a connection
    (redis-py 8.1 otherwise lets calls made side by side on a new client, or one reloading
    its map, write to connections the reload just closed)."""

    # A dropped connection or a slot map in flux (a failover) is retried, on the reloaded
    # map; a timeout is not, so an outage costs a caller one deadline, as on one server.
    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]
        aioredis.ConnectionError,
        ClusterDownError,
        SlotNotCoveredError,
    )

    def __init__(self, *args: Any, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # At most max_connections calls in flight in all, so none on any one node.
        self._calls = asyncio.Semaphore(kwargs["max_connections"])
        self._wait_s = wait_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._calls.acquire()
        except TimeoutError:
            raise aioredis.ConnectionError(
                f"no Redis connection free within {self._wait_s}s"
            ) from None
        try:
            if self._initialize:
                await self.initialize()
            return await super().execute_command(*args, **kwargs)
        finally:
            self._calls.release()


def _open_cluster(url: str, *, max_connections: int, timeout_s: float) -> RedisCluster:
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a {CLUSTER_SCHEME}:// URL has no database (only 0): {parts.path!r}")
    addresses = parts.netloc.rpartition("@")[2]
    nodes = []
    for address in addresses.split(","):
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{CLUSTER_SCHEME}:// node {address!r} is not host:port")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return _Cluster(
        startup_nodes=nodes,
        wait_s=timeout_s,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=_retry(),
        # A failover: the dead master's node is dropped from the map and it is reloaded from
        # a live node, so the next attempt reaches the replica that took over.
        reinitialize_steps=1,
        # Off: a Valkey Cluster sends no maintenance notifications, and the handshake that
        # asks for them races connections other tasks are opening (redis-py 8.1 then writes
        # to a closed socket: "Connection lost").
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
