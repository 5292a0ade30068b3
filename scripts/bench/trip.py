"""Benchmark of the trip service: request -> first offer latency, and trips/s to acceptance.

    .venv/bin/python -m scripts.bench.trip [--drivers 10000] [--rate 100] [--seconds 10]

Starts its own embedded Redis, Postgres and NATS (or uses RIDESHARE_* URLs), ONE location
process and ONE trip process (``python -m location``, ``python -m trip``), indexes
``--drivers`` available drivers over a 30 x 30 km city, and drives the trip service from this
one client process over gRPC, watching JetStream for the events. Prints the figures; nothing
here asserts a target.

1. offer latency: RequestTrip at ``--rate`` per second (open loop, each with a fresh quote
   made beforehand; the first second is a warm-up, not counted); the time from sending
   RequestTrip to receiving its first ``trip.offered`` on JetStream (so it includes the
   commit, the dispatcher's search and reservation, the outbox relay and JetStream).
   Drivers do not answer (offers last 15 min, longer than the run).
2. saturation: the highest RequestTrip rate (short open-loop steps, doubling then
   bisecting) whose request -> first offer p99 stays within ``--window`` + ``--target-ms``:
   the target docs/PERFORMANCE.md gives for this path, which is what a rider waits on
   before seeing a driver. ``--window`` is the trip process's dispatch window, 0 by default
   (nearest-first, as in the earlier runs); the target is 50 ms beyond it.
3. throughput: ``--riders`` concurrent riders book trips back to back for ``--seconds``;
   drivers accept every offer as it arrives; trips/s from request to ``trip.accepted``.
4. reference: an asyncpg INSERT + commit loop (``--riders`` connections) on the same
   PostgreSQL, in the same run; trips/s as a ratio to its commits/s (a trip to acceptance
   commits several times in the trip service, so the ratio is what to compare across hosts,
   not a share to approach 1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import asyncpg
import grpc
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from location.store import LocationStore
from protos import events
from protos.common.v1 import common_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2 as pb
from protos.trip.v1 import trip_pb2_grpc
from rideshare import bus
from rideshare.grpc_client import make_channel
from rideshare.infra import free_port
from rideshare.runtime import open_redis
from scripts.bench.common import (
    Step,
    infrastructure,
    open_loop,
    percentile,
    print_reference,
    print_saturation,
    saturation,
    service_process,
    wait_healthy,
)
from scripts.bench.location import city_point, report_positions, setup_index

TripStub: TypeAlias = "trip_pb2_grpc.TripServiceAsyncStub"

STANDARD = common_pb2.VEHICLE_CLASS_STANDARD

TripRef: TypeAlias = tuple[str, str]
"""A booked trip: (trip id, rider id)."""


class Watcher:
    """Calls ``on_offered`` / ``on_accepted`` for every new trip.offered / trip.accepted;
    ``offer_committed`` is the wall time the last trip.offered was committed at."""

    def __init__(self) -> None:
        self.on_offered: Callable[[trip_events.TripOffered], None] = lambda _: None
        self.on_accepted: Callable[[trip_events.TripAccepted], None] = lambda _: None
        self.offer_committed = 0.0

    async def handle(self, msg: Msg) -> None:
        envelope = bus.decode_envelope(msg.data)
        if envelope.type == events.TRIP_OFFERED:
            self.offer_committed = envelope.occurred_at.timestamp()
            self.on_offered(envelope.unpack(trip_events.TripOffered))
        elif envelope.type == events.TRIP_ACCEPTED:
            self.on_accepted(envelope.unpack(trip_events.TripAccepted))


async def quote(stub: TripStub, rider: str, rng: random.Random) -> pb.RequestTripRequest:
    lat, lng = city_point(rng)
    pickup = common_pb2.LatLng(lat=lat, lng=lng)
    dropoff = common_pb2.LatLng(lat=lat + 0.02, lng=lng + 0.02)
    q = await stub.EstimateFare(
        pb.EstimateFareRequest(
            pickup=pickup, dropoff=dropoff, vehicle_class=STANDARD, rider_id=rider
        ),
        timeout=5,
    )
    return pb.RequestTripRequest(
        rider_id=rider, quote_id=q.quote_id, pickup=pickup, dropoff=dropoff
    )


@dataclass
class OfferLatency:
    """Per counted trip, in ms: request -> first trip.offered received (``latencies``), and
    its parts: RequestTrip's answer, and the offer's commit -> its event received."""

    latencies: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    relayed: list[float] = field(default_factory=list)

    def summary(self, name: str, values: list[float]) -> str:
        return f"{name} p50={percentile(values, 0.5):.1f} p99={percentile(values, 0.99):.1f} ms"


async def bench_offer_latency(
    stub: TripStub, watcher: Watcher, rate: float, seconds: float, trip_ids: list[TripRef]
) -> tuple[OfferLatency, int]:
    rng = random.Random(3)
    sent: dict[str, float] = {}
    result = OfferLatency()

    warmup = {f"lat-rider-{i}" for i in range(int(rate))}  # the first second: pools fill

    def offered(event: trip_events.TripOffered) -> None:
        started = sent.pop(event.rider_id, None)
        if started is not None and event.rider_id not in warmup:
            result.latencies.append((time.perf_counter() - started) * 1000)
            result.relayed.append((time.time() - watcher.offer_committed) * 1000)

    watcher.on_offered = offered
    count = int(rate * (seconds + 1))
    requests = [await quote(stub, f"lat-rider-{i}", rng) for i in range(count)]

    async def one(request: pb.RequestTripRequest) -> None:
        sent[request.rider_id] = started = time.perf_counter()
        trip = await stub.RequestTrip(request, timeout=5)
        trip_ids.append((trip.id, request.rider_id))
        if request.rider_id not in warmup:
            result.answered.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i, request in enumerate(requests):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request)))
    await asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while len(result.latencies) < count - len(warmup):  # noqa: ASYNC110 - events from another process
                await asyncio.sleep(0.05)
    return result, count - len(warmup)


async def cancel_all(stub: TripStub, trips: list[TripRef]) -> None:
    """Cancel ``trips`` as their riders (32 at a time), which ends their offers and frees
    their drivers: every phase starts with the whole city available. Not timed."""
    gate = asyncio.Semaphore(32)
    failed: collections.Counter[str] = collections.Counter()

    async def cancel(trip_id: str, rider_id: str) -> None:
        async with gate:
            try:
                await stub.CancelTrip(
                    pb.CancelTripRequest(
                        trip_id=trip_id, actor=pb.ACTOR_RIDER, actor_id=rider_id, reason="bench"
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                failed[exc.code().name] += 1

    await asyncio.gather(*(cancel(t, r) for t, r in trips))
    if failed:
        print(f"  (of {len(trips)} cancels, failed: {dict(failed)})", flush=True)
    trips.clear()


async def offer_step(
    stub: TripStub, watcher: Watcher, *, rate: float, seconds: float, tag: int
) -> Step:
    """RequestTrip at ``rate`` for ``seconds`` with fresh riders (named after ``tag``) and
    quotes made beforehand; each call ends when its first trip.offered arrives (5 s at most,
    else it failed). The step's trips are cancelled afterwards."""
    rng = random.Random(tag)
    riders = [f"sat{tag}-rider-{i}" for i in range(max(1, int(rate * seconds)))]
    requests: list[pb.RequestTripRequest] = []
    for start in range(0, len(riders), 50):
        requests += await asyncio.gather(*(quote(stub, r, rng) for r in riders[start : start + 50]))
    pending = iter(requests)
    offers: dict[str, asyncio.Future[None]] = {}

    def offered(event: trip_events.TripOffered) -> None:
        future = offers.get(event.rider_id)
        if future is not None and not future.done():
            future.set_result(None)

    watcher.on_offered = offered

    booked: list[TripRef] = []

    async def one() -> bool:
        request = next(pending)
        offers[request.rider_id] = asyncio.get_running_loop().create_future()
        trip = await stub.RequestTrip(request, timeout=5)
        booked.append((trip.id, request.rider_id))
        async with asyncio.timeout(5):
            await offers[request.rider_id]
        return True

    step, _ = await open_loop(one, rate=rate, seconds=seconds)
    await cancel_all(stub, booked)
    return step


async def bench_throughput(
    stub: TripStub, watcher: Watcher, riders: int, seconds: float
) -> tuple[int, float]:
    accepted: dict[str, asyncio.Future[None]] = {}
    accepts: set[asyncio.Task[object]] = set()

    async def accept(event: trip_events.TripOffered) -> None:
        await stub.AcceptTrip(
            pb.AcceptTripRequest(
                trip_id=event.trip_id, driver_id=event.driver_id, offer_id=event.offer_id
            ),
            timeout=5,
        )

    def offered(event: trip_events.TripOffered) -> None:
        task: asyncio.Task[object] = asyncio.create_task(accept(event))
        accepts.add(task)
        task.add_done_callback(accepts.discard)

    def on_accepted(event: trip_events.TripAccepted) -> None:
        future = accepted.get(event.rider_id)
        if future is not None and not future.done():
            future.set_result(None)

    watcher.on_offered = offered
    watcher.on_accepted = on_accepted
    done = 0
    counter = itertools.count()
    deadline = time.perf_counter() + seconds

    async def rider_loop(worker: int) -> None:
        nonlocal done
        rng = random.Random(worker)
        while time.perf_counter() < deadline:
            rider = f"tp-rider-{next(counter)}"
            request = await quote(stub, rider, rng)
            accepted[rider] = asyncio.get_running_loop().create_future()
            await stub.RequestTrip(request, timeout=5)
            async with asyncio.timeout(10):
                await accepted[rider]
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(rider_loop(i) for i in range(riders)))
    return done, time.perf_counter() - started


async def keep_reporting(store: LocationStore, drivers: list[str]) -> None:
    """Every driver reports its position again every 20 s, as a driver app does."""
    while True:
        await asyncio.sleep(20)
        await report_positions(store, drivers)


async def commits_per_s(dsn: str, *, connections: int, seconds: float) -> float:
    """Single-row INSERTs per second, each its own commit, from ``connections`` asyncpg
    connections back to back (temporary tables: nothing is left behind)."""
    conns = [await asyncpg.connect(dsn, timeout=10) for _ in range(connections)]
    done = 0
    try:
        for conn in conns:
            await conn.execute("CREATE TEMP TABLE bench_ref (id bigint, at timestamptz)")
        end = time.perf_counter() + seconds

        async def loop(conn: asyncpg.Connection) -> None:
            nonlocal done
            while time.perf_counter() < end:
                await conn.execute("INSERT INTO bench_ref VALUES ($1, now())", done, timeout=10)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(conn) for conn in conns))
        return done / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close(timeout=10)


async def run(args: argparse.Namespace) -> None:
    async with infrastructure() as urls:
        location_port, trip_port = free_port(), free_port()
        with service_process(
            "location",
            urls,
            port=location_port,
            env={"RIDESHARE_DRIVER_STALE_S": "600", "RIDESHARE_OFFER_HOLD_MAX_S": "1000"},
        ):
            await wait_healthy(f"127.0.0.1:{location_port}")
            client = open_redis(urls.redis_url, max_connections=32, timeout_s=10)
            drivers = [f"bench-{i}" for i in range(args.drivers)]
            await setup_index(LocationStore(client), drivers)
            print(f"setup: {len(drivers):,} available drivers indexed", flush=True)
            # Dispatch leaves out positions older than a minute: the drivers keep reporting.
            refresher = asyncio.create_task(keep_reporting(LocationStore(client), drivers))
            with service_process(
                "trip",
                urls,
                port=trip_port,
                env={
                    "RIDESHARE_LOCATION_ADDR": f"127.0.0.1:{location_port}",
                    # Offers outlive the run: the earlier phases' offers, never answered,
                    # must not lapse into the later phases as a storm of redispatches.
                    "RIDESHARE_OFFER_TIMEOUT_S": "900",
                    "RIDESHARE_DISPATCH_LIMIT_S": "3600",
                    "RIDESHARE_DB_POOL_MAX": "40",
                    "RIDESHARE_DISPATCH_WINDOW_S": str(args.window),
                },
            ):
                target = f"127.0.0.1:{trip_port}"
                await wait_healthy(target)
                nc = await bus.connect(urls.nats_url, name="bench-trip")
                watcher = Watcher()
                js = nc.jetstream(timeout=5)
                await bus.ensure_stream(js)
                await js.subscribe(
                    "trip.>",
                    stream=events.STREAM,
                    cb=watcher.handle,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW,
                )
                try:
                    async with make_channel(target, default_timeout_s=60.0) as channel:
                        stub: TripStub = trip_pb2_grpc.TripServiceStub(channel)
                        booked: list[TripRef] = []
                        offer, count = await bench_offer_latency(
                            stub, watcher, args.rate, args.seconds, booked
                        )
                        latencies = offer.latencies
                        print(
                            f"offer latency: RequestTrip -> first trip.offered on JetStream, "
                            f"{args.rate:.0f} req/s for {args.seconds:.0f}s, "
                            f"{len(drivers):,} indexed drivers, {len(latencies)}/{count} "
                            f"offered: p50={percentile(latencies, 0.5):.1f} ms "
                            f"p99={percentile(latencies, 0.99):.1f} ms "
                            f"max={max(latencies):.1f} ms\n  its parts: "
                            f"{offer.summary('RequestTrip answered', offer.answered)}; "
                            f"{offer.summary('offer committed -> event received', offer.relayed)}",
                            flush=True,
                        )
                        await cancel_all(stub, booked)
                        tags = itertools.count()
                        result = await saturation(
                            lambda rate: offer_step(
                                stub, watcher, rate=rate, seconds=args.step_s, tag=next(tags)
                            ),
                            start=args.sat_start,
                            target_p99_s=args.window + args.target_ms / 1000,
                            max_rate=5_000,
                        )
                        print_saturation("RequestTrip -> first trip.offered", result)
                        trips, elapsed = await bench_throughput(
                            stub, watcher, args.riders, args.seconds
                        )
                        print(
                            f"throughput: {trips} trips request -> accepted in {elapsed:.1f}s "
                            f"= {trips / elapsed:.0f} trips/s ({args.riders} concurrent "
                            "riders, drivers auto-accepting; one trip process, one client "
                            "process)",
                            flush=True,
                        )
                        commits = await commits_per_s(
                            urls.postgres_dsn, connections=args.riders, seconds=args.reference_s
                        )
                        print_reference(
                            "request -> accepted", trips / elapsed, commits, "trips/s",
                            raw_name=f"asyncpg INSERT + commit, {args.riders} connections",
                            raw_unit="commits/s",
                        )  # fmt: skip
                finally:
                    await nc.drain()
                    refresher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refresher
                    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--riders", type=int, default=32)
    parser.add_argument(
        "--target-ms", type=float, default=50.0, help="offer p99 target, beyond the window"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="RIDESHARE_DISPATCH_WINDOW_S of the trip process (0: nearest-first, as before)",
    )
    parser.add_argument("--sat-start", type=float, default=25.0, help="first step, req/s")
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds per step")
    parser.add_argument("--reference-s", type=float, default=3.0, help="raw loop's seconds")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
