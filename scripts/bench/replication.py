"""Benchmark of what replication costs: a synchronous PostgreSQL standby on each commit, and
a JetStream stream on three nodes (R3) on each acknowledged publish.

    .venv/bin/python -m scripts.bench.replication [--commits 2000] [--publishes 2000]

Starts the local cluster profile (rideshare/infra_cluster.py: three NATS nodes, PostgreSQL
primary + streaming standby, durable: fsync on) in a temporary directory and measures, one
after the other, on the same host in the same run:

- commits: one connection, autocommitted single-row INSERTs back to back, with the standby
  asynchronous (the reference) and then synchronous (each commit waits for the standby to
  have its WAL); latency percentiles and commits/s.
- publishes: one connection, publishes back to back each awaiting its ack, to a stream on
  one node (R1, the reference) and to a stream on three (R3, acked once two have it).

Each "reference:" line gives the replicated figure, the unreplicated one and their ratio, so
a figure taken on a busy host still says what replication costs. Asserts no target.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from protos.events import MSG_ID_HEADER
from rideshare import bus
from rideshare.infra_cluster import ClusterInfra
from rideshare.pg_standby import host_dsns, set_synchronous
from scripts.bench.common import percentile, print_reference


async def timed(count: int, one: Callable[[int], Awaitable[object]]) -> list[float]:
    """``one(i)`` ``count`` times back to back; each call's latency in ms."""
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        await one(i)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def report(name: str, latencies: list[float]) -> float:
    p50 = percentile(latencies, 0.5)
    rate = 1000 / statistics.fmean(latencies)
    print(
        f"{name:<28} p50 {p50:6.2f} ms  p99 {percentile(latencies, 0.99):6.2f} ms  {rate:8,.0f}/s",
        flush=True,
    )
    return p50


async def commits(cluster: ClusterInfra, count: int) -> None:
    assert cluster.urls is not None
    primary = host_dsns(cluster.urls.postgres_dsn)[0]
    admin = primary.rpartition("/")[0] + "/postgres"
    conn = await asyncpg.connect(primary, timeout=10)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (n int, at timestamptz)")

        async def insert(i: int) -> None:
            await conn.execute("INSERT INTO bench_commit VALUES ($1, now())", i, timeout=10)

        results = {}
        for synchronous in (False, True):
            await set_synchronous(admin, synchronous=synchronous)
            # A new session sees the reloaded setting.
            await conn.execute("SELECT pg_reload_conf()")
            # What the primary says of its standby: "sync" once the setting took.
            state = await conn.fetchval("SELECT sync_state FROM pg_stat_replication")
            name = f"commit, standby {state}"
            await timed(count // 10, insert)  # warm-up
            results[synchronous] = report(name, await timed(count, insert))
        print_reference(
            "commit p50, sync standby",
            results[True],
            results[False],
            "ms",
            raw_name="async standby",
        )
    finally:
        await conn.close()


async def publishes(cluster: ClusterInfra, count: int) -> None:
    assert cluster.urls is not None
    nc = await bus.connect(cluster.urls.nats_url, name="bench-replication")
    js = nc.jetstream(timeout=10)
    payload = b"x" * 300  # about an event envelope's size
    results = {}
    try:
        for replicas in (1, 3):
            stream = f"BENCH_R{replicas}"
            subject = f"bench.r{replicas}"
            await bus.ensure_stream(js, name=stream, subjects=[subject], replicas=replicas)

            async def publish(i: int, subject: str = subject) -> None:
                await js.publish(subject, payload, headers={MSG_ID_HEADER: f"{subject}-{i}"})

            await asyncio.sleep(2)  # the stream's leader is elected after the create returns
            await timed(count // 10, lambda i, p=publish: p(count + i))  # type: ignore[misc]
            results[replicas] = report(f"publish + ack, R{replicas}", await timed(count, publish))
            await js.delete_stream(stream)
    finally:
        await nc.close()
    print_reference("publish p50, R3", results[3], results[1], "ms", raw_name="R1")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--publishes", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rideshare-bench-") as directory:
        cluster = ClusterInfra(Path(directory), synchronous_standby=False)
        await cluster.start()
        try:
            await commits(cluster, args.commits)
            await publishes(cluster, args.publishes)
        finally:
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
