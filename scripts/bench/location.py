"""Benchmark of the location service: ingest, nearest-driver search, live watch latency.

    .venv/bin/python -m scripts.bench.location [--drivers 100000] [--seconds 10]

Starts its own embedded Redis and NATS (or uses RIDESHARE_* URLs), runs ONE location service
process (``python -m location``), or ``--copies N`` of them, and drives it from this ONE client
process over gRPC. Prints the figures; nothing here asserts a target.

1. ingest: ReportPositions streams, updates/s; and the raw reference, pipelined GEOADD from
   redis-py on the same Valkey in the same run, with ingest as a ratio to it. With several
   copies the streams are dealt over them in turn, and each copy's updates/s and CPU per
   1,000 updates are printed beside Valkey's (its ``INFO cpu``) and this client's.
2. search: NearestDrivers at a fixed offered rate over ``--drivers`` available drivers spread
   over a 30 x 30 km city; p50/p99 latency. Then its saturation point: the highest offered
   rate (short open-loop steps, doubling then bisecting) whose p99 stays within
   ``--search-target-ms``, 5 ms by default: the search target of docs/PERFORMANCE.md, which
   dispatch spends once per offer batch inside the trip service's 50 ms request -> offer.
   Searches (and watches) go through one round_robin channel over every copy.
3. watch: delay from sending an update to a WatchDriver stream receiving it, with the service
   taking ``--watch-rate`` updates/s in all.
4. batch: ``--items`` searches (2 km, limit 10) as that many NearestDrivers calls, one after
   another and side by side, against one NearestDriversBatch call; and as many holds as
   ReserveDriver calls against one ReserveDrivers call (every hold released again between
   runs, untimed). The median of ``--rounds`` runs of each, in ms per item, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import grpc

from location.domain import Position
from location.store import LocationStore
from protos.common.v1 import common_pb2
from protos.location.v1 import location_pb2 as pb
from protos.location.v1 import location_pb2_grpc
from rideshare.grpc_client import make_channel
from rideshare.infra import free_port
from rideshare.redis_client import RedisClient, open_redis
from scripts.bench.common import (
    Step,
    infrastructure,
    open_loop,
    percentile,
    print_reference,
    print_saturation,
    saturation,
    service_process,
    tree_cpu_s,
    wait_healthy,
)

Stub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"

CITY_SW = (52.38, 13.20)  # 30 x 30 km box over Berlin
CITY_DEG = (30_000 / 111_320, 30_000 / (111_320 * 0.61))
GEOADD_KEY = "bench:geo"  # the raw reference's own key, deleted after it


def city_point(rng: random.Random) -> tuple[float, float]:
    return CITY_SW[0] + rng.random() * CITY_DEG[0], CITY_SW[1] + rng.random() * CITY_DEG[1]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def make_available(store: LocationStore, driver_ids: list[str]) -> None:
    for start in range(0, len(driver_ids), 500):
        await asyncio.gather(
            *(store.driver_online(d, 1, at_ms=now_ms()) for d in driver_ids[start : start + 500])
        )


@dataclass(frozen=True)
class Taken:
    """Updates a copy applied (accepted or rejected: each went through the store's script)
    and those it dropped for a newer one of the same driver before writing (under load)."""

    applied: int
    superseded: int

    @property
    def received(self) -> int:
        return self.applied + self.superseded


async def bench_ingest(
    stubs: Sequence[Stub], driver_ids: list[str], seconds: float, streams: int, batch: int
) -> tuple[list[Taken], float]:
    """What each of ``stubs`` (one per copy) took, stream ``i`` going to copy
    ``i % len(stubs)``, and the seconds it took."""
    rng = random.Random(1)
    base_ts = now_ms()
    # Built before timing: the client's cost of making messages is not the service's cost.
    prebuilt = []
    for i in range(200_000):
        lat, lng = city_point(rng)
        prebuilt.append(
            pb.PositionUpdate(
                driver_id=driver_ids[i % len(driver_ids)],
                lat=lat,
                lng=lng,
                heading=float(i % 360),
                speed_mps=8.0,
                accuracy_m=5.0,
                client_ts_ms=base_ts + i // len(driver_ids) + 1,
            )
        )
    chunk = len(prebuilt) // streams
    deadline = time.perf_counter() + seconds

    broken = 0

    async def one_stream(stub: Stub, part: list[pb.PositionUpdate]) -> Taken:
        nonlocal broken
        position, counted, superseded = 0, 0, 0

        async def requests() -> AsyncIterator[pb.PositionBatch]:
            nonlocal position
            while position < len(part) and time.perf_counter() <= deadline:
                position += batch
                yield pb.PositionBatch(updates=part[position - batch : position])

        # On a slow host a Redis call in the service can pass its 2 s timeout and end the
        # stream with UNAVAILABLE: what that stream carried is not counted, and a new one
        # carries on from where it was.
        while position < len(part) and time.perf_counter() <= deadline:
            try:
                summary = await stub.ReportPositions(requests(), timeout=seconds + 60)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                broken += 1
                continue
            counted += int(summary.accepted + summary.rejected)
            superseded += int(summary.superseded)
        return Taken(counted, superseded)

    started = time.perf_counter()
    counts = await asyncio.gather(
        *(
            one_stream(stubs[i % len(stubs)], prebuilt[i * chunk : (i + 1) * chunk])
            for i in range(streams)
        )
    )
    elapsed = time.perf_counter() - started
    if broken:
        print(f"ingest: {broken} stream(s) ended UNAVAILABLE; their updates are not counted")
    per_copy = [
        Taken(sum(t.applied for t in mine), sum(t.superseded for t in mine))
        for mine in (counts[i :: len(stubs)] for i in range(len(stubs)))
    ]
    return per_copy, elapsed


async def valkey_cpu_s(client: RedisClient) -> float:
    """CPU seconds the Valkey server has used so far (all its threads)."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def geoadd_per_s(client: RedisClient, seconds: float, *, pipelines: int = 4) -> float:
    """GEOADDs per second from ``pipelines`` concurrent redis-py pipelines of 100 commands
    (no transaction) on a key of its own: what one Python client gets from this Valkey."""
    rng = random.Random(4)
    points = [(city_point(rng), f"member:{i}") for i in range(100_000)]
    done = 0
    end = time.perf_counter() + seconds

    async def loop(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < end:
            pipe = client.pipeline(transaction=False)
            for _ in range(100):
                (lat, lng), member = points[i % len(points)]
                pipe.geoadd(GEOADD_KEY, (lng, lat, member))
                i += 1
            await pipe.execute()
            done += 100

    started = time.perf_counter()
    await asyncio.gather(*(loop(n * 25_000) for n in range(pipelines)))
    elapsed = time.perf_counter() - started
    await client.delete(GEOADD_KEY)
    return done / elapsed


async def nearest(stub: Stub, rng: random.Random) -> bool:
    lat, lng = city_point(rng)
    await stub.NearestDrivers(
        pb.NearestDriversRequest(
            lat=lat, lng=lng, radius_m=2_000, limit=10,
            vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
        ),
        timeout=5,
    )  # fmt: skip
    return True


async def search_saturation(stub: Stub, args: argparse.Namespace) -> None:
    rng = random.Random(5)

    async def step(rate: float) -> Step:
        result, _ = await open_loop(lambda: nearest(stub, rng), rate=rate, seconds=args.step_s)
        return result

    result = await saturation(
        step, start=args.sat_start, target_p99_s=args.search_target_ms / 1000, max_rate=20_000
    )
    print_saturation("NearestDrivers 2 km, limit 10", result)


async def bench_search(stub: Stub, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: requests go out on schedule whether or not earlier ones have answered.
    Latencies (ms) of the answered ones, and how many failed: on a slow host a fixed rate
    queues until the service's Redis pool gives up (UNAVAILABLE), which is counted, not fatal."""
    rng = random.Random(2)
    _, latencies = await open_loop(lambda: nearest(stub, rng), rate=rate, seconds=seconds)
    return latencies or [math.inf], max(1, int(rate * seconds)) - len(latencies)


async def bench_watch(
    stub: Stub, driver_ids: list[str], rate: float, seconds: float, watchers: int
) -> list[float]:
    watched = driver_ids[:watchers]
    sent_at: dict[tuple[str, int], float] = {}
    delays: list[float] = []

    async def watch(driver_id: str) -> None:
        call = stub.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id), timeout=seconds + 30)
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            async for position in call:
                sent = sent_at.pop((driver_id, position.client_ts_ms), None)
                if sent is not None:
                    delays.append((time.perf_counter() - sent) * 1000)

    watch_tasks = [asyncio.create_task(watch(d)) for d in watched]
    await asyncio.sleep(1.0)  # let the subscriptions settle
    rng = random.Random(3)
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    last_ts: dict[str, int] = {}

    async def requests() -> AsyncIterator[pb.PositionBatch]:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            tick_batch = pb.PositionBatch()
            for _ in range(per_tick):
                driver_id = driver_ids[n % len(driver_ids)]
                lat, lng = city_point(rng)
                ts = max(now_ms() + 1_000, last_ts.get(driver_id, 0) + 1)
                last_ts[driver_id] = ts
                if n % len(driver_ids) < watchers:
                    sent_at[(driver_id, ts)] = time.perf_counter()
                tick_batch.updates.add(
                    driver_id=driver_id, lat=lat, lng=lng, heading=1.0, client_ts_ms=ts
                )
                n += 1
            yield tick_batch
            await asyncio.sleep(max(0.0, start + (n / per_tick) * tick - time.perf_counter()))

    await stub.ReportPositions(requests(), timeout=seconds + 30)
    await asyncio.sleep(0.5)
    for task in watch_tasks:
        task.cancel()
    await asyncio.gather(*watch_tasks, return_exceptions=True)
    return delays


async def timed_ms(call: Callable[[], Awaitable[object]], rounds: int) -> float:
    """The median wall time of ``rounds`` runs of ``call``, in ms."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def bench_batch(stub: Stub, driver_ids: list[str], *, items: int, rounds: int) -> None:
    rng = random.Random(7)
    searches = [
        pb.NearestDriversRequest(
            lat=lat, lng=lng, radius_m=2_000, limit=10,
            vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
        )
        for lat, lng in (city_point(rng) for _ in range(items))
    ]  # fmt: skip
    batch = pb.NearestDriversBatchRequest(searches=searches)

    async def one_by_one() -> None:
        for search in searches:
            await stub.NearestDrivers(search, timeout=10)

    async def side_by_side() -> None:
        await asyncio.gather(*(stub.NearestDrivers(s, timeout=30) for s in searches))

    async def batched() -> None:
        await stub.NearestDriversBatch(batch, timeout=30)

    await batched()  # warm the channel and the service
    report_batch(
        f"{items} searches", "NearestDrivers", "NearestDriversBatch",
        [await timed_ms(one_by_one, rounds), await timed_ms(side_by_side, rounds),
         await timed_ms(batched, rounds)],
        items,
    )  # fmt: skip

    holds = [pb.ReserveDriverRequest(driver_id=d, trip_id="bench-trip") for d in driver_ids]

    async def release() -> None:
        for hold in holds:
            await stub.ReleaseDriver(
                pb.ReleaseDriverRequest(driver_id=hold.driver_id, trip_id=hold.trip_id),
                timeout=10,
            )

    async def reserve_one_by_one() -> None:
        for hold in holds:
            await stub.ReserveDriver(hold, timeout=10)

    async def reserve_side_by_side() -> None:
        await asyncio.gather(*(stub.ReserveDriver(h, timeout=30) for h in holds))

    async def reserve_batched() -> None:
        reply = await stub.ReserveDrivers(pb.ReserveDriversRequest(holds=holds), timeout=30)
        if not all(reply.reserved):
            raise RuntimeError("ReserveDrivers refused a driver the bench had released")

    figures = []
    for call in (reserve_one_by_one, reserve_side_by_side, reserve_batched):
        times = []
        for _ in range(rounds):
            times.append(await timed_ms(call, 1))
            await release()
        figures.append(statistics.median(times))
    report_batch(f"{items} holds", "ReserveDriver", "ReserveDrivers", figures, items)


def report_batch(what: str, single: str, batch: str, ms: list[float], items: int) -> None:
    one_by_one, side_by_side, batched = (m / items for m in ms)
    print(f"batch: {what}: {single} one by one {one_by_one:.3f} ms per item, side by side "
          f"{side_by_side:.3f} ms per item; one {batch} {batched:.3f} ms per item "
          f"({one_by_one / batched:.1f}x / {side_by_side / batched:.1f}x faster), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


async def setup_index(store: LocationStore, driver_ids: list[str]) -> None:
    """Every driver AVAILABLE (class standard) at a random point of the city."""
    await make_available(store, driver_ids)
    await report_positions(store, driver_ids)


async def report_positions(store: LocationStore, driver_ids: list[str]) -> None:
    """Each driver reports its point of the city (the same one on every call) as of now:
    what keeps a long benchmark's positions fresh."""
    rng = random.Random(0)
    ts = now_ms() - 1_000
    positions = []
    for driver_id in driver_ids:
        lat, lng = city_point(rng)
        positions.append(Position(driver_id, lat, lng, 0.0, 0.0, 0.0, ts, ts))
    for start in range(0, len(positions), 1_000):
        await store.apply(positions[start : start + 1_000], now_ms=ts)


async def run(args: argparse.Namespace) -> None:
    async with infrastructure() as urls, contextlib.AsyncExitStack() as stack:
        addresses, pids = [], []
        for _ in range(args.copies):
            port = free_port()
            # the index must not age out mid-benchmark
            process = stack.enter_context(
                service_process("location", urls, port=port,
                                env={"RIDESHARE_DRIVER_STALE_S": "600"})
            )  # fmt: skip
            addresses.append(f"127.0.0.1:{port}")
            pids.append(process.pid)
        for address in addresses:
            await wait_healthy(address)
        target = ",".join(addresses)
        client = open_redis(urls.redis_url, max_connections=32, timeout_s=10)
        drivers = [f"bench-{i}" for i in range(args.drivers)]
        started = time.perf_counter()
        await setup_index(LocationStore(client), drivers)
        print(f"setup: {len(drivers):,} available drivers indexed in "
              f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
        async with make_channel(target, default_timeout_s=60.0) as channel:
            stub: Stub = location_pb2_grpc.LocationServiceStub(channel)
            if "ingest" in args.only:
                await report_ingest(addresses, pids, drivers, client, args)
            if "search" in args.only:
                count = await client.zcard("loc:{0}:geo:avail:1")
                latencies, failed = await bench_search(stub, args.search_rate, args.seconds)
                print(f"search: NearestDrivers 2 km, limit 10, {count:,} indexed drivers, "
                      f"{args.search_rate:.0f} req/s for {args.seconds:.0f}s: "
                      f"p50={percentile(latencies, 0.5):.2f} ms "
                      f"p99={percentile(latencies, 0.99):.2f} ms "
                      f"max={max(latencies):.2f} ms"
                      + (f" ({failed} failed)" if failed else ""), flush=True)  # fmt: skip
                cpu0 = [tree_cpu_s(pid) for pid in pids]
                await search_saturation(stub, args)
                split = " / ".join(
                    f"{tree_cpu_s(pid) - c:.1f}" for pid, c in zip(pids, cpu0, strict=True)
                )
                print(f"search: CPU seconds of the saturation steps by copy: {split}",
                      flush=True)  # fmt: skip
            if "watch" in args.only:
                delays = await bench_watch(
                    stub, drivers[: args.watch_pool], args.watch_rate, args.seconds,
                    args.watchers,
                )  # fmt: skip
                print(f"watch: {args.watch_rate:.0f} updates/s in, {args.watchers} "
                      f"watchers, {len(delays)} samples: "
                      f"p50={percentile(delays, 0.5):.2f} ms "
                      f"p99={percentile(delays, 0.99):.2f} ms", flush=True)  # fmt: skip
            if "batch" in args.only:
                held = drivers[-args.items :]  # away from the watch pool's moving drivers
                await bench_batch(stub, held, items=args.items, rounds=args.rounds)
        await client.aclose()


async def report_ingest(
    addresses: list[str],
    pids: list[int],
    drivers: list[str],
    client: RedisClient,
    args: argparse.Namespace,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for address in addresses:  # one channel per copy: each stream stays on its copy
            channel = await stack.enter_async_context(make_channel(address, default_timeout_s=60.0))
            stubs.append(location_pb2_grpc.LocationServiceStub(channel))
        cpu0, valkey0, own0 = [tree_cpu_s(p) for p in pids], await valkey_cpu_s(client), own_cpu_s()
        counts, elapsed = await bench_ingest(stubs, drivers, args.seconds, args.streams, args.batch)
        cpu1, valkey1, own1 = [tree_cpu_s(p) for p in pids], await valkey_cpu_s(client), own_cpu_s()
    total = sum(t.applied for t in counts)
    received = sum(t.received for t in counts)
    ingest = total / elapsed
    print(f"ingest: {ingest:,.0f} updates/s applied through ReportPositions, "
          f"{received / elapsed:,.0f}/s sent ({args.streams} streams of {args.batch}-update "
          f"batches, one client process, {len(pids)} service process(es)), "
          f"load average {os.getloadavg()[0]:.1f}",
          flush=True)  # fmt: skip
    for i, (taken, c0, c1) in enumerate(zip(counts, cpu0, cpu1, strict=True)):
        print(f"ingest: copy {i + 1}: {taken.applied / elapsed:,.0f} updates/s applied "
              f"({taken.superseded:,} superseded), "
              f"{1000 * (c1 - c0) / max(1, taken.applied):.3f} CPU s per 1,000 applied "
              f"({c1 - c0:.1f} s in {elapsed:.1f} s)", flush=True)  # fmt: skip
    per_k = 1000 / max(1, total)
    print(f"ingest: CPU s per 1,000 applied: copies in all "
          f"{(sum(cpu1) - sum(cpu0)) * per_k:.3f}, Valkey {(valkey1 - valkey0) * per_k:.3f}, "
          f"this client {(own1 - own0) * per_k:.3f}", flush=True)  # fmt: skip
    geoadd = await geoadd_per_s(client, args.reference_s)
    print_reference(
        "ingest through ReportPositions", ingest, geoadd, "updates/s",
        raw_name="redis-py GEOADD, 4 pipelines of 100",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drivers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--copies", type=int, default=1, help="location processes")
    parser.add_argument("--streams", type=int, default=2, help="dealt over the copies in turn")
    parser.add_argument("--batch", type=int, default=100, help="updates per stream message")
    parser.add_argument("--search-rate", type=float, default=500.0)
    parser.add_argument("--watch-rate", type=float, default=5_000.0)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--watch-pool", type=int, default=5_000, help="drivers moving")
    parser.add_argument("--search-target-ms", type=float, default=5.0, help="p99 target")
    parser.add_argument("--sat-start", type=float, default=250.0, help="first step, req/s")
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds per step")
    parser.add_argument("--reference-s", type=float, default=3.0, help="raw loop's seconds")
    parser.add_argument("--items", type=int, default=200, help="searches, holds per batch")
    parser.add_argument("--rounds", type=int, default=5, help="batch runs, median taken")
    parser.add_argument(
        "--only", default="ingest,search,watch,batch", help="comma-separated phases to run"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
