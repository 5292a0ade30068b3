"""Benchmark of the notification service: events/s end to end, JetStream -> stored ->
published in-app, by ONE service process.

    .venv/bin/python -m scripts.bench.notification [--trips 3000] [--batch 100]

Starts its own embedded Postgres and NATS (or uses RIDESHARE_* URLs), runs ONE notification
process (``python -m notification``) on a schema and durable of its own, and watches
``notify.user.*`` from this process. Each simulated trip publishes seven events
(driver.online, trip.requested, trip.offered, trip.accepted, trip.arrived, trip.started,
trip.completed); the service consumes six of them (trip.requested concerns it not), stores
five notifications and pushes each in-app, and queues push/SMS deliveries that its delivery
worker sends to the log at the same time.

1. backlog: the events are in the stream before the service starts; events/s from its first
   in-app push to its last (how fast one process drains a backlog).
2. live: the service is idle, then the events are published as fast as this process can;
   events/s from the first publish to the last push, and the delay from an event's time to
   its push reaching this process (p50/p99).
3. saturation: the highest rate of events published live (short steps, doubling then
   bisecting; trips started on schedule, each trip's events in order) whose event -> push
   p99 stays within ``--target-ms``, 1 s by default. No document states a latency target for
   notifications (their target is throughput, >= 2,000 events/s); a second is what a rider
   reading "your driver has arrived" notices, and ten times the edge's 100 ms target for a
   position, which a map shows as it moves. Beyond the step's rate the publisher in this
   process may be the limit: then the achieved rate falls short and the step fails too.
4. reference: bare core NATS publish -> subscribe on the same server in the same run
   (messages/s, one publisher connection, one subscriber), and the live events/s as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import time
import uuid
from datetime import UTC, datetime

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.notification.v1 import notification_pb2
from protos.trip.v1 import events_pb2 as trip_events
from rideshare import bus
from rideshare.infra import free_port
from rideshare.settings import InfraUrls
from rideshare.supervisor import Supervisor
from scripts.bench.common import (
    Step,
    infrastructure,
    percentile,
    print_reference,
    print_saturation,
    saturation,
)

EVENTS_PER_TRIP = 7
CONSUMED_PER_TRIP = 6  # driver.online, offered, accepted, arrived, started, completed
PUSHES_PER_TRIP = 5  # offer (driver), assigned, arrived, started, completed (rider)
FARE = common_pb2.Money(amount_minor=1890, currency="EUR")
PICKUP = common_pb2.LatLng(lat=52.52, lng=13.405)
REFERENCE_SUBJECT = "bench.reference"


def trip_events_of(n: int, run: str) -> list[tuple[str, str, Message]]:
    """(subject, aggregate id, payload) of one trip's life."""
    rider, driver, trip = f"{run}-r{n}", f"{run}-d{n}", f"{run}-t{n}"
    return [
        (
            events.DRIVER_ONLINE,
            driver,
            driver_events.DriverWentOnline(
                driver_id=driver,
                vehicle_id=f"v{n}",
                vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
                driver_name=f"Driver {n}",
                vehicle_make="Toyota",
                vehicle_model="Prius",
                vehicle_plate=f"B-RS-{n}",
            ),
        ),
        (events.TRIP_REQUESTED, trip, trip_events.TripRequested(trip_id=trip, rider_id=rider)),
        (
            events.TRIP_OFFERED,
            trip,
            trip_events.TripOffered(
                trip_id=trip,
                rider_id=rider,
                driver_id=driver,
                offer_id=f"o{n}",
                fare=FARE,
                pickup=PICKUP,
                distance_to_pickup_m=900,
            ),
        ),
        (
            events.TRIP_ACCEPTED,
            trip,
            trip_events.TripAccepted(trip_id=trip, rider_id=rider, driver_id=driver, eta_s=300),
        ),
        (
            events.TRIP_ARRIVED,
            trip,
            trip_events.TripArrived(trip_id=trip, rider_id=rider, driver_id=driver),
        ),
        (
            events.TRIP_STARTED,
            trip,
            trip_events.TripStarted(trip_id=trip, rider_id=rider, driver_id=driver),
        ),
        (
            events.TRIP_COMPLETED,
            trip,
            trip_events.TripCompleted(
                trip_id=trip,
                rider_id=rider,
                driver_id=driver,
                fare=FARE,
                distance_m=5200,
                duration_s=840,
            ),
        ),
    ]


async def publish_trip(js: JetStreamContext, n: int, run: str) -> None:
    for version, (subject, aggregate, payload) in enumerate(trip_events_of(n, run), 1):
        envelope = bus.make_envelope(
            payload, type=subject, aggregate_id=aggregate, aggregate_version=version
        )
        await bus.publish_envelope(js, envelope, timeout_s=30)


async def publish_trips(js: JetStreamContext, trips: int, run: str) -> None:
    """Publish every trip's events, trip by trip in order, many trips at a time."""
    for start in range(0, trips, 200):
        batch = range(start, min(trips, start + 200))
        await asyncio.gather(*(publish_trip(js, n, run) for n in batch))


async def live_step(
    nc: NATS, js: JetStreamContext, run: str, *, rate: float, seconds: float, target_s: float
) -> Step:
    """Trips started at ``rate`` / 7 per second (``rate`` events/s published) for
    ``seconds``; the step waits for their pushes up to 5 target p99s after the last publish.
    A push that never came counts as infinitely late."""
    trips = max(1, int(rate * seconds / EVENTS_PER_TRIP))
    counter = PushCounter(run, trips * PUSHES_PER_TRIP)
    sub = await nc.subscribe(events.NOTIFY_USER_WILDCARD, cb=counter.on_msg)
    await nc.flush()
    tasks = []
    start = time.perf_counter()
    for n in range(trips):
        delay = start + n * EVENTS_PER_TRIP / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(publish_trip(js, n, run)))
    await asyncio.gather(*tasks)
    published = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5 * target_s):
            await counter.done.wait()
    await sub.unsubscribe()
    spent = max(counter.last, published) - start
    delivered = counter.count / counter.expected
    samples = [*counter.delays_ms, *[math.inf] * max(0, counter.expected - counter.count)]
    return Step(
        offered=rate,
        achieved=delivered * trips * EVENTS_PER_TRIP / spent,
        p99_s=percentile(samples, 0.99) / 1000,
    )


async def core_nats_per_s(nats_url: str, *, seconds: float) -> float:
    """Messages per second from one connection's publishes to another's subscription on the
    same server: the server and client path without JetStream or the service."""
    pub = await bus.connect(nats_url, name="bench-reference-pub")
    sub_conn = await bus.connect(nats_url, name="bench-reference-sub")
    received = 0

    async def on_msg(_: Msg) -> None:
        nonlocal received
        received += 1

    payload = b"x" * 200  # about an envelope's size
    sent = 0
    try:
        sub = await sub_conn.subscribe(REFERENCE_SUBJECT, cb=on_msg)
        await sub_conn.flush(timeout=10)
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            for _ in range(1_000):
                await pub.publish(REFERENCE_SUBJECT, payload)
            sent += 1_000
            await pub.flush(timeout=10)  # no more than one round of messages in flight
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while received < sent:  # noqa: ASYNC110 - another connection's callbacks
                    await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
        return received / elapsed
    finally:
        await pub.close()
        await sub_conn.close()


class PushCounter:
    """Counts the in-app pushes of one run's users as they arrive on core NATS."""

    def __init__(self, run: str, expected: int) -> None:
        self.run = run
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.delays_ms: list[float] = []
        self.done = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        now = time.perf_counter()
        notification = notification_pb2.Notification.FromString(msg.data)
        if not notification.user_id.startswith(self.run):
            return
        created = notification.created_at.ToDatetime(tzinfo=UTC)
        self.delays_ms.append((datetime.now(UTC) - created).total_seconds() * 1000)
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()


def supervisor(urls: InfraUrls, port: int, name: str, batch: int) -> Supervisor:
    """Runs ``python -m notification`` on a schema and durable of its own."""
    env = {
        "RIDESHARE_NOTIFICATION_PORT": str(port),
        "RIDESHARE_NOTIFICATION_METRICS_PORT": "0",
        "RIDESHARE_NOTIFICATION_SCHEMA": name,
        "RIDESHARE_NOTIFICATION_DURABLE": name,
        "RIDESHARE_NOTIFICATION_BATCH": str(batch),
        "RIDESHARE_LOG_LEVEL": "ERROR",  # not the SMS warnings of phoneless riders
    }
    return Supervisor(urls, extra_env=env)


async def main(args: argparse.Namespace) -> None:
    async with infrastructure() as urls:
        nc = await bus.connect(urls.nats_url, name="bench-notification")
        js = nc.jetstream(timeout=30)
        await bus.ensure_stream(js)
        name = f"bench_{uuid.uuid4().hex[:8]}"
        consumed = args.trips * CONSUMED_PER_TRIP
        pushes = args.trips * PUSHES_PER_TRIP

        backlog = PushCounter(f"{name}a", pushes)
        sub = await nc.subscribe(events.NOTIFY_USER_WILDCARD, cb=backlog.on_msg)
        await publish_trips(js, args.trips, backlog.run)
        print(f"{args.trips} trips: {consumed} events to consume, {pushes} in-app pushes each run")

        service = supervisor(urls, free_port(), name, args.batch)
        await service.start("notification")
        try:
            async with asyncio.timeout(600):
                await backlog.done.wait()
            await sub.unsubscribe()
            spent = backlog.last - backlog.first
            print(
                f"backlog: {consumed / spent:,.0f} events/s "
                f"({pushes / spent:,.0f} notifications/s) over {spent:.2f} s"
            )

            live = PushCounter(f"{name}b", pushes)
            sub = await nc.subscribe(events.NOTIFY_USER_WILDCARD, cb=live.on_msg)
            await nc.flush()
            started = time.perf_counter()
            await publish_trips(js, args.trips, live.run)
            published = time.perf_counter() - started
            async with asyncio.timeout(600):
                await live.done.wait()
            await sub.unsubscribe()
            spent = live.last - started
            print(
                f"live: {consumed / spent:,.0f} events/s end to end over {spent:.2f} s "
                f"(publishing alone {consumed * 7 / 6 / published:,.0f} events/s); "
                f"event -> push p50 {percentile(live.delays_ms, 0.5):.0f} ms, "
                f"p99 {percentile(live.delays_ms, 0.99):.0f} ms"
            )
            live_rate = consumed / spent
            steps = itertools.count()
            result = await saturation(
                lambda rate: live_step(
                    nc, js, f"{name}s{next(steps)}", rate=rate, seconds=args.step_s,
                    target_s=args.target_ms / 1000,
                ),
                start=args.sat_start, target_p99_s=args.target_ms / 1000, max_rate=20_000,
            )  # fmt: skip
            print_saturation("events published -> in-app push", result, " events/s")
            raw = await core_nats_per_s(urls.nats_url, seconds=args.reference_s)
            print_reference(
                "live events end to end", live_rate, raw, "events/s",
                raw_name="core NATS publish -> subscribe", raw_unit="messages/s",
            )  # fmt: skip
        finally:
            await service.stop_all()
        await nc.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trips", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="consumer fetch batch")
    parser.add_argument("--target-ms", type=float, default=1_000.0, help="push p99 target")
    parser.add_argument("--sat-start", type=float, default=250.0, help="first step, events/s")
    parser.add_argument("--step-s", type=float, default=3.0, help="seconds per step")
    parser.add_argument("--reference-s", type=float, default=3.0, help="raw loop's seconds")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
