"""The rider service killed (SIGKILL) between the provider's charge and its own commit, run as
a real process: started again, it finds the charge at the provider and records it, and the
provider holds exactly one PaymentIntent for the trip. Its log never holds a card number."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from protos import events
from protos.rider.v1 import rider_pb2 as pb
from protos.rider.v1 import rider_pb2_grpc
from rider.billing import PaymentStatus
from rideshare import bus
from rideshare.db import create_pool
from rideshare.faults import AFTER_CHARGE, CRASH_AT_ENV
from rideshare.infra import EmbeddedInfra, free_port
from rideshare.simulate.cards import tokenize_card
from tests.helpers import eventually, operator_channel, publish_event
from tests.integration.test_payments import (
    GOOD_CARD,
    completed,
    intents_for,
    stripe_client,
)

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def rider_process(
    infra: EmbeddedInfra, port: int, log: Path, *, crash: bool
) -> AsyncIterator[asyncio.subprocess.Process]:
    assert infra.urls is not None
    urls = infra.urls.for_service("rider")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RIDESHARE_REDIS_URL": urls.redis_url,
        "RIDESHARE_POSTGRES_DSN": urls.postgres_dsn,
        "RIDESHARE_NATS_URL": urls.nats_url,
        "RIDESHARE_STRIPE_API_BASE": urls.stripe_api_base,
        "RIDESHARE_RIDER_PORT": str(port),
        "RIDESHARE_RIDER_METRICS_PORT": "0",
        "RIDESHARE_SHUTDOWN_GRACE_S": "1",
        "RIDESHARE_STRIPE_TIMEOUT_S": "5",
        # A claim whose charger died comes back to the next one after this long.
        "RIDESHARE_PAYMENT_LEASE_S": "6",
        CRASH_AT_ENV: AFTER_CHARGE if crash else "",
    }
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rider", env=env, stdout=out, stderr=out, cwd=ROOT
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def answers(stub: rider_pb2_grpc.RiderServiceAsyncStub) -> bool:
    try:
        await stub.GetRider(pb.GetRiderRequest(rider_id="nobody"), timeout=2)
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return True


async def test_a_rider_service_killed_after_the_charge_charges_once_after_restart(
    outage_infra: EmbeddedInfra, tmp_path: Path
) -> None:
    assert outage_infra.urls is not None
    urls = outage_infra.urls
    port = free_port()
    log = tmp_path / "rider.log"
    nc = await bus.connect(urls.nats_url, name="test-payments-crash")
    db = await create_pool(urls.postgres_dsn, schema="rider", max_size=2)
    try:
        async with (
            asyncio.timeout(240),
            operator_channel(f"127.0.0.1:{port}") as channel,
            stripe_client(urls) as provider,
        ):
            stub = rider_pb2_grpc.RiderServiceStub(channel)
            async with rider_process(outage_infra, port, log, crash=True) as first:
                await eventually(lambda: answers(stub), timeout_s=60, every_s=0.2)
                rider = await stub.CreateRider(
                    pb.CreateRiderRequest(
                        name="Ada",
                        phone="+49151" + str(uuid.uuid4().int)[:8],
                        password="correct horse battery",
                    ),
                    timeout=30,
                )
                method_id = await tokenize_card(urls.stripe_api_base, GOOD_CARD)
                await stub.AddPaymentMethod(
                    pb.AddPaymentMethodRequest(rider_id=rider.id, payment_method_id=method_id),
                    timeout=30,
                )
                trip_id = f"trip-{uuid.uuid4().hex[:8]}"
                await publish_event(
                    nc.jetstream(timeout=5),
                    events.TRIP_COMPLETED,
                    completed(trip_id, rider.id),
                    aggregate_id=trip_id,
                    version=6,
                )
                async with asyncio.timeout(60):
                    assert await first.wait() == -signal.SIGKILL

            # Killed between the charge and the commit: charged at the provider, CHARGING here.
            row = await db.fetchrow(
                "SELECT id, status, attempts FROM payments WHERE trip_id = $1", trip_id
            )
            assert row is not None
            assert (row["status"], row["attempts"]) == (PaymentStatus.CHARGING, 1)
            before = await intents_for(provider, row["id"])
            assert [i.status for i in before] == ["succeeded"]

            async with rider_process(outage_infra, port, log, crash=False):
                await eventually(lambda: answers(stub), timeout_s=60, every_s=0.2)

                async def recorded() -> bool:
                    status = await db.fetchval(
                        "SELECT status FROM payments WHERE id = $1", row["id"]
                    )
                    return bool(status == PaymentStatus.SUCCEEDED)

                await eventually(recorded, timeout_s=90, every_s=0.3)
                await asyncio.sleep(1.0)  # a wrong second charge would show by now
            after = await intents_for(provider, row["id"])
            assert [(i.id, i.status) for i in after] == [(before[0].id, "succeeded")]
            published = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE subject = $1 AND aggregate_id = $2",
                events.RIDER_PAYMENT_SUCCEEDED,
                row["id"],
            )
            assert published == 1
        text = log.read_text(errors="replace")
        assert "recovered attempt 1" in text
        assert GOOD_CARD not in text
    finally:
        await db.close()
        await nc.close()
