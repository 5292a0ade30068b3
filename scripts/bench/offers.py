"""Benchmark of parallel offers: request -> accepted when drivers decline often, K = 1 vs K.

    .venv/bin/python -m scripts.bench.offers [--parallel 3] [--decline 0.5] [--rate 5]
        [--seconds 20] [--think-s 1.0] [--drivers 5000]

Starts its own embedded Redis, Postgres and NATS (or uses RIDESHARE_* URLs), ONE location
process with ``--drivers`` available drivers over a 30 x 30 km city, and for each phase ONE
trip process: first with ``RIDESHARE_DISPATCH_PARALLEL_OFFERS=1`` (one offer at a time), then
with ``--parallel``. Nothing here asserts a target.

1. request -> accepted, per phase: RequestTrip at ``--rate`` per second for ``--seconds``
   (open loop; the same seeded pickups in both phases). This process answers every
   trip.offered as its driver would: after a think time (``--think-s``, 0.5x to 1.5x) it
   declines with probability ``--decline``, else accepts (the first accept of a trip wins;
   the others are told ``accepted_elsewhere``). A driver's think time and choice depend only
   on (trip's rider, driver), so both phases meet the same drivers' same answers. Prints the
   share of requests accepted within ``--deadline-s`` and request -> trip.accepted p50, p90,
   p99; then every live trip of the phase is cancelled, freeing its drivers.
2. reference: the think time is the least a request -> accepted can take; each phase's
   median is printed as a ratio to it, and K's to K = 1's in the same run.
3. saturation, per phase (``--no-saturation`` skips it): the highest RequestTrip rate whose
   request -> first trip.offered p99 stays within ``--target-ms`` (50 ms: the trip bench's
   target), as scripts/bench/trip.py measures it; K reservations and K offer rows per trip
   are what K > 1 costs there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import time

import grpc
from nats.js.api import DeliverPolicy

from location.store import LocationStore
from protos import events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2 as pb
from protos.trip.v1 import trip_pb2_grpc
from rideshare import bus
from rideshare.grpc_client import make_channel
from rideshare.infra import free_port
from rideshare.runtime import open_redis
from rideshare.settings import InfraUrls
from scripts.bench.common import (
    infrastructure,
    percentile,
    print_reference,
    print_saturation,
    saturation,
    service_process,
    wait_healthy,
)
from scripts.bench.location import setup_index
from scripts.bench.trip import TripStub, Watcher, offer_step, quote


class Drivers:
    """Answers offers as the drivers would: the same driver gives the same answer to the
    same rider's trip, after the same think time, in every phase."""

    def __init__(self, stub: TripStub, *, decline: float, think_s: float, seed: int) -> None:
        self._stub = stub
        self._decline = decline
        self._think_s = think_s
        self._seed = seed
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = {"accepts": 0, "declines": 0, "lost": 0, "late": 0}
        self.accepted: set[str] = set()  # trips; an accept of one twice would be a bug

    def offered(self, event: trip_events.TripOffered) -> None:
        task = asyncio.create_task(self._answer(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, event: trip_events.TripOffered) -> None:
        rng = random.Random(f"{self._seed}/{event.rider_id}/{event.driver_id}")
        declines = rng.random() < self._decline
        await asyncio.sleep(self._think_s * rng.uniform(0.5, 1.5))
        ids = {"trip_id": event.trip_id, "driver_id": event.driver_id, "offer_id": event.offer_id}
        try:
            if declines:
                await self._stub.DeclineTrip(pb.DeclineTripRequest(**ids), timeout=10)
                self.counts["declines"] += 1
            else:
                await self._stub.AcceptTrip(pb.AcceptTripRequest(**ids), timeout=10)
                self.counts["accepts"] += 1
                if event.trip_id in self.accepted:
                    print(f"trip {event.trip_id} accepted twice", flush=True)
                self.accepted.add(event.trip_id)
        except grpc.aio.AioRpcError as exc:
            # Taken by another driver of the batch, or the trip moved on: a real app's race.
            lost = exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
            self.counts["lost" if lost else "late"] += 1


async def phase(
    stub: TripStub, watcher: Watcher, args: argparse.Namespace, *, parallel: int
) -> tuple[float, list[float]]:
    """One phase's share of requests accepted in time and their request -> accepted (ms)."""
    drivers = Drivers(stub, decline=args.decline, think_s=args.think_s, seed=args.seed)
    rng = random.Random(args.seed)
    count = max(1, int(args.rate * args.seconds))
    riders = [f"k{parallel}-rider-{i}" for i in range(count)]
    # The same pickups in every phase: the riders' names differ, the seeded points do not.
    requests = [await quote(stub, rider, rng) for rider in riders]
    sent: dict[str, float] = {}
    accepted: dict[str, float] = {}

    def on_accepted(event: trip_events.TripAccepted) -> None:
        began = sent.get(event.rider_id)
        if began is not None and event.rider_id not in accepted:
            accepted[event.rider_id] = (time.perf_counter() - began) * 1000

    watcher.on_offered = drivers.offered
    watcher.on_accepted = on_accepted

    async def one(request: pb.RequestTripRequest) -> None:
        sent[request.rider_id] = time.perf_counter()
        await stub.RequestTrip(request, timeout=10)

    start = time.perf_counter()
    tasks = []
    for i, request in enumerate(requests):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request)))
    await asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.deadline_s):
            while len(accepted) < count:  # noqa: ASYNC110 - events from another process
                await asyncio.sleep(0.1)
    in_time = [ms for ms in accepted.values() if ms <= args.deadline_s * 1000]
    share = len(in_time) / count
    print(f"K={parallel}: {count} requests at {args.rate:g}/s, decline {args.decline:g}, think "
          f"{args.think_s:g} s: accepted in {args.deadline_s:g} s {share:.1%}; request -> "
          f"accepted p50 {percentile(in_time, 0.5):,.0f} ms, p90 "
          f"{percentile(in_time, 0.9):,.0f} ms, p99 {percentile(in_time, 0.99):,.0f} ms; "
          f"answers {drivers.counts}", flush=True)  # fmt: skip
    watcher.on_offered = lambda _: None
    await cancel_live(stub)
    return share, in_time


async def cancel_live(stub: TripStub) -> int:
    """Cancel every live trip, so that the next step starts with every driver free."""
    live = [pb.TRIP_STATE_REQUESTED, pb.TRIP_STATE_DISPATCHING, pb.TRIP_STATE_ACCEPTED]
    cancelled = 0
    for _ in range(100):  # bounded: a trip that cannot be cancelled must not hang the bench
        request = pb.ListTripsRequest(states=live, page_size=200)
        trips = (await stub.ListTrips(request, timeout=10)).trips
        if not trips:
            break
        for trip in trips:
            with contextlib.suppress(grpc.aio.AioRpcError):  # it ended meanwhile
                await stub.CancelTrip(
                    pb.CancelTripRequest(trip_id=trip.id, actor=pb.ACTOR_SYSTEM, reason="bench"),
                    timeout=10,
                )
                cancelled += 1
    return cancelled


async def with_trip_service(
    urls: InfraUrls,
    location_port: int,
    watcher: Watcher,
    args: argparse.Namespace,
    *,
    parallel: int,
) -> float:
    """One phase on a trip process of its own with K = ``parallel``, and the saturation
    search after it; the phase's request -> accepted median (ms)."""
    trip_port = free_port()
    env = {
        "RIDESHARE_LOCATION_ADDR": f"127.0.0.1:{location_port}",
        "RIDESHARE_OFFER_TIMEOUT_S": str(max(5.0, 3 * args.think_s)),
        "RIDESHARE_DISPATCH_PARALLEL_OFFERS": str(parallel),
        # The indexed drivers report no positions: the sweeper must not take their trips
        # back as silent while the bench runs.
        "RIDESHARE_DRIVER_SILENT_S": "3600",
        "RIDESHARE_DB_POOL_MAX": "40",
    }
    with service_process("trip", urls, port=trip_port, env=env):
        target = f"127.0.0.1:{trip_port}"
        await wait_healthy(target)
        async with make_channel(target, default_timeout_s=60.0) as channel:
            stub: TripStub = trip_pb2_grpc.TripServiceStub(channel)
            _, in_time = await phase(stub, watcher, args, parallel=parallel)
            if args.saturation:
                tags = itertools.count(1_000 * parallel)  # riders of their own
                result = await saturation(
                    lambda rate: offer_step(
                        stub, watcher, rate=rate, seconds=args.step_s, tag=next(tags)
                    ),
                    start=args.sat_start,
                    target_p99_s=args.target_ms / 1000,
                    max_rate=5_000,
                )
                print_saturation(f"RequestTrip -> first trip.offered, K={parallel}", result)
                await cancel_live(stub)
    return percentile(in_time, 0.5) if in_time else 0.0


async def run(args: argparse.Namespace) -> None:
    async with infrastructure() as urls:
        location_port = free_port()
        with service_process(
            "location", urls, port=location_port, env={"RIDESHARE_DRIVER_STALE_S": "600"}
        ):
            await wait_healthy(f"127.0.0.1:{location_port}")
            client = open_redis(urls.redis_url, max_connections=32, timeout_s=10)
            await setup_index(LocationStore(client), [f"bench-{i}" for i in range(args.drivers)])
            await client.aclose()
            print(f"setup: {args.drivers:,} available drivers indexed", flush=True)
            nc = await bus.connect(urls.nats_url, name="bench-offers")
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
            medians: dict[int, float] = {}
            try:
                for parallel in (1, args.parallel):
                    medians[parallel] = await with_trip_service(
                        urls, location_port, watcher, args, parallel=parallel
                    )
            finally:
                await nc.drain()
            think_ms = args.think_s * 1000
            for parallel, median in medians.items():
                print_reference(
                    f"request -> accepted p50, K={parallel}", median, think_ms, "ms",
                    raw_name="one driver's think time",
                )  # fmt: skip
            print_reference(
                f"request -> accepted p50, K={args.parallel}", medians[args.parallel],
                medians[1], "ms", raw_name="K=1 in the same run",
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parallel", type=int, default=3, help="K of the second phase")
    parser.add_argument("--decline", type=float, default=0.5, help="a driver's decline prob.")
    parser.add_argument("--think-s", type=float, default=1.0, help="a driver's mean think time")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--deadline-s", type=float, default=30.0, help="accepted in time")
    parser.add_argument("--drivers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-ms", type=float, default=50.0, help="offer p99 target")
    parser.add_argument("--sat-start", type=float, default=25.0, help="first step, req/s")
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds per step")
    parser.add_argument("--saturation", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if not 0 <= args.decline < 1 or args.parallel < 2:
        parser.error("--decline must be in [0, 1) and --parallel at least 2")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
