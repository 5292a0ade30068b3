"""Benchmark of the charging saga against the embedded provider (localstripe): charges/s one
rider-service process sustains, and the delay from trip.completed to rider.payment_succeeded.

    .venv/bin/python -m scripts.bench.payments [--charges 400] [--riders 40] [--concurrency 16]

Starts its own embedded servers (localstripe among them), then in the same run:

1. raw: the bare SDK loop, PaymentIntent create + confirm (one call, off-session) against the
   same localstripe, ``--concurrency`` at a time (the provider's own ceiling here), then one
   at a time (a lone call's latency);
2. saga: ONE ``python -m rider`` process; ``--charges`` trip.completed events for riders with
   a test card, published as fast as this process can; charges/s from the first publish to
   the last rider.payment_succeeded seen on NATS, and each charge's delay from its publish to
   its event (p50/p99, mostly queueing in a burst);
3. paced: ``--paced`` more at ``--rate`` per second, well below capacity: the delay a single
   charge adds from trip.completed to payment_succeeded (p50/p99).

Each saga charge costs the provider call plus the consumer's commit (event claimed, record
written), three of the worker's (claim, attempt, outcome with its outbox row) and the outbox
relay's publish.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import stripe
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from protos import events
from protos.common.v1 import common_pb2
from protos.rider.v1 import events_pb2 as rider_events
from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from protos.trip.v1 import events_pb2 as trip_events
from rider.settings import LOCAL_API_KEY
from rideshare import bus
from rideshare.bus import decode_envelope, encode_envelope, make_envelope
from rideshare.grpc_client import make_channel
from rideshare.infra import free_port
from rideshare.settings import InfraUrls
from rideshare.simulate.cards import tokenize_card
from scripts.bench.common import infrastructure, percentile, service_process, wait_healthy

FARE = common_pb2.Money(amount_minor=1890, currency="EUR")


async def raw(api_base: str, charges: int, concurrency: int) -> dict[str, float]:
    """The bare SDK: create + confirm PaymentIntents for one customer's card."""
    http = stripe.HTTPXClient(timeout=30)
    client = stripe.StripeClient(
        LOCAL_API_KEY, base_addresses={"api": api_base}, http_client=http, max_network_retries=0
    )
    try:
        customer = await client.v1.customers.create_async()
        method_id = await tokenize_card(api_base)
        await client.v1.payment_methods.attach_async(method_id, params={"customer": customer.id})
        latencies: list[float] = []
        queue = list(range(charges))

        async def worker() -> None:
            while queue:
                n = queue.pop()
                began = time.perf_counter()
                await client.v1.payment_intents.create_async(
                    params={
                        "amount": FARE.amount_minor,
                        "currency": "eur",
                        "customer": customer.id,
                        "payment_method": method_id,
                        "confirm": True,
                        "off_session": True,
                        "metadata": {"payment_id": f"raw-{n}"},
                    }
                )
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    return {
        "per_s": charges / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def saga(
    urls: InfraUrls, charges: int, riders: int, *, paced_charges: int, paced_rate: float
) -> dict[str, dict[str, float]]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    env = {"RIDESHARE_PAYMENT_RETRY_S": "1"}
    with service_process("rider", urls, port=port, env=env):
        await wait_healthy(target, timeout_s=60)
        channel = make_channel(target, default_timeout_s=60)
        stub = rider_pb2_grpc.RiderServiceStub(channel)
        rider_ids: list[str] = []
        for n in range(riders):
            rider = await stub.CreateRider(
                rider_pb2.CreateRiderRequest(
                    name=f"Bench {n}",
                    phone="+49151" + str(uuid.uuid4().int)[:8],
                    password="correct horse battery",
                )
            )
            await stub.AddPaymentMethod(
                rider_pb2.AddPaymentMethodRequest(
                    rider_id=rider.id, payment_method_id=await tokenize_card(urls.stripe_api_base)
                )
            )
            rider_ids.append(rider.id)
        await channel.close(None)

        nc = await bus.connect(urls.nats_url, name="bench-payments")
        try:
            burst = await _phase(nc, rider_ids, charges, rate=None)
            paced = await _phase(nc, rider_ids, paced_charges, rate=paced_rate)
        finally:
            await nc.close()
    return {"burst": burst, "paced": paced}


async def _phase(
    nc: NATS, rider_ids: list[str], charges: int, *, rate: float | None
) -> dict[str, float]:
    """Publish ``charges`` trip.completed events (as fast as possible, or ``rate`` per second)
    and wait for every payment_succeeded."""
    published: dict[str, float] = {}
    delays: list[float] = []
    done = asyncio.Event()
    last = 0.0

    async def on_paid(msg: Msg) -> None:
        nonlocal last
        paid = decode_envelope(msg.data).unpack(rider_events.PaymentSucceeded)
        sent = published.get(paid.trip_id)
        if sent is None:
            return
        last = time.perf_counter()
        delays.append(last - sent)
        if len(delays) == charges:
            done.set()

    sub = await nc.subscribe(events.RIDER_PAYMENT_SUCCEEDED, cb=on_paid)
    js = nc.jetstream(timeout=10)
    run = uuid.uuid4().hex[:6]
    first = time.perf_counter()
    for n in range(charges):
        if rate is not None:
            await asyncio.sleep(max(0.0, first + n / rate - time.perf_counter()))
        trip_id = f"bench-{run}-{n}"
        envelope = make_envelope(
            trip_events.TripCompleted(
                trip_id=trip_id, rider_id=rider_ids[n % len(rider_ids)], driver_id="d", fare=FARE
            ),
            type=events.TRIP_COMPLETED,
            aggregate_id=trip_id,
            aggregate_version=6,
        )
        published[trip_id] = time.perf_counter()
        await js.publish(
            events.TRIP_COMPLETED,
            encode_envelope(envelope),
            headers={events.MSG_ID_HEADER: envelope.event_id},
        )
    async with asyncio.timeout(600):
        await done.wait()
    await sub.unsubscribe()
    return {
        "per_s": charges / (last - first),
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    async with infrastructure() as urls:
        reference = await raw(urls.stripe_api_base, args.charges, args.concurrency)
        one = await raw(urls.stripe_api_base, args.paced, 1)
        print(
            f"raw SDK create+confirm x{args.concurrency}: {reference['per_s']:.0f} charges/s, "
            f"p50 {reference['p50_ms']:.1f} ms, p99 {reference['p99_ms']:.1f} ms; one at a "
            f"time: p50 {one['p50_ms']:.1f} ms, p99 {one['p99_ms']:.1f} ms",
            flush=True,
        )
        ours = await saga(
            urls, args.charges, args.riders, paced_charges=args.paced, paced_rate=args.rate
        )
        burst, paced = ours["burst"], ours["paced"]
        print(
            f"saga, one rider process, {args.charges} at once: {burst['per_s']:.0f} charges/s "
            f"({burst['per_s'] / reference['per_s']:.2f} of raw); trip.completed -> "
            f"payment_succeeded p50 {burst['p50_ms']:.0f} ms, p99 {burst['p99_ms']:.0f} ms",
            flush=True,
        )
        print(
            f"saga, {args.paced} at {args.rate:g}/s: trip.completed -> payment_succeeded "
            f"p50 {paced['p50_ms']:.0f} ms, p99 {paced['p99_ms']:.0f} ms "
            f"({paced['p50_ms'] / one['p50_ms']:.1f}x a lone raw call's p50)",
            flush=True,
        )
        print(f"load average: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=400)
    parser.add_argument("--riders", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paced", type=int, default=100, help="charges of the paced phase")
    parser.add_argument("--rate", type=float, default=10.0, help="paced phase, charges/s")
    asyncio.run(main(parser.parse_args()))
