"""Benchmark of the charging saga against the embedded provider (localstripe): charges/s one
rider-service process sustains, and the delay from trip.completed to rider.payment_succeeded.

    .venv/bin/python -m scripts.bench.payments [--charges 400] [--riders 40] [--concurrency 16]

Starts its own embedded servers (localstripe among them), then in the same run:

1. raw: the bare SDK loop, PaymentIntent create + confirm (one call, off-session) against the
   same localstripe, ``--concurrency`` at a time: the provider's own ceiling here;
2. saga: ONE ``python -m rider`` process; ``--charges`` trip.completed events for riders with
   a test card, published as fast as this process can; charges/s from the first publish to
   the last rider.payment_succeeded seen on NATS, and each charge's delay from its publish to
   its event (p50/p99). Each saga charge costs the provider call plus three commits (claim,
   attempt, outcome with its outbox row) and the outbox relay's publish.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import stripe
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


async def saga(urls: InfraUrls, charges: int, riders: int) -> dict[str, float]:
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

        await nc.subscribe(events.RIDER_PAYMENT_SUCCEEDED, cb=on_paid)
        js = nc.jetstream(timeout=10)
        run = uuid.uuid4().hex[:6]
        first = time.perf_counter()
        for n in range(charges):
            trip_id = f"bench-{run}-{n}"
            envelope = make_envelope(
                trip_events.TripCompleted(
                    trip_id=trip_id, rider_id=rider_ids[n % riders], driver_id="d", fare=FARE
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
        await nc.close()
    return {
        "per_s": charges / (last - first),
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    async with infrastructure() as urls:
        reference = await raw(urls.stripe_api_base, args.charges, args.concurrency)
        print(
            f"raw SDK create+confirm x{args.concurrency}: {reference['per_s']:.0f} charges/s, "
            f"p50 {reference['p50_ms']:.1f} ms, p99 {reference['p99_ms']:.1f} ms",
            flush=True,
        )
        ours = await saga(urls, args.charges, args.riders)
        print(
            f"saga (one rider process): {ours['per_s']:.0f} charges/s "
            f"({ours['per_s'] / reference['per_s']:.2f} of raw); trip.completed -> "
            f"payment_succeeded p50 {ours['p50_ms']:.0f} ms, p99 {ours['p99_ms']:.0f} ms",
            flush=True,
        )
        print(f"load average: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=400)
    parser.add_argument("--riders", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
