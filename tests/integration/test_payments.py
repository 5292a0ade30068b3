"""Payments in the rider service against real Postgres, NATS and localstripe: cards, the fare
charged exactly once, declines ending outstanding, cancellation fees, refunds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias

import asyncpg
import grpc
import pytest
import stripe
from nats.js import JetStreamContext

from protos import events
from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2 as pb
from protos.rider.v1 import rider_pb2_grpc
from protos.trip.v1 import events_pb2 as trip_events
from rider.app import running
from rider.billing import RetryPolicy
from rider.payment_store import PaymentStore
from rider.payments import WorkerPolicy
from rider.settings import LOCAL_API_KEY, PaymentSettings
from rideshare import bus
from rideshare.db import create_pool, quote_schema
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, grpc_status, operator_channel, publish_event

Stub: TypeAlias = "rider_pb2_grpc.RiderServiceAsyncStub"
GOOD_CARD = "4242424242424242"
# localstripe, like Stripe's test mode: attaches, then every charge is declined.
DECLINED_CARD = "4000000000000341"
# Declined already when added.
REFUSED_CARD = "4000000000000002"


@dataclass
class Rig:
    stub: Stub
    db: asyncpg.Pool
    js: JetStreamContext
    stripe: stripe.StripeClient


def payment_settings(infra: InfraUrls) -> PaymentSettings:
    return PaymentSettings(
        api_base=infra.stripe_api_base,
        timeout_s=10.0,
        worker=WorkerPolicy(
            retry=RetryPolicy(max_attempts=2, first_delay_s=0.2), lease_s=15.0, poll_s=0.2
        ),
    )


@contextlib.asynccontextmanager
async def stripe_client(infra: InfraUrls) -> AsyncIterator[stripe.StripeClient]:
    http = stripe.HTTPXClient(timeout=10)
    try:
        yield stripe.StripeClient(
            LOCAL_API_KEY,
            base_addresses={"api": infra.stripe_api_base},
            http_client=http,
            max_network_retries=0,
        )
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def rider_service(infra: InfraUrls, schema: str) -> AsyncIterator[Rig]:
    settings = ServiceSettings(name="rider", infra=infra, grpc_port=0, shutdown_grace_s=1.0)
    nc = await bus.connect(infra.nats_url, name=f"test-{schema}")
    try:
        db = await create_pool(infra.postgres_dsn, schema=schema, max_size=2)
        try:
            async with (
                running(settings, payment_settings(infra), schema=schema, durable=schema) as srv,
                operator_channel(f"127.0.0.1:{srv.port}") as channel,
                stripe_client(infra) as provider,
            ):
                yield Rig(
                    rider_pb2_grpc.RiderServiceStub(channel), db, nc.jetstream(timeout=5), provider
                )
            await db.execute(f"DROP SCHEMA {quote_schema(schema)} CASCADE")
        finally:
            await db.close()
        with contextlib.suppress(Exception):
            await nc.jetstream(timeout=5).delete_consumer(events.STREAM, schema)
    finally:
        await nc.close()


@pytest.fixture
async def rig(infra: InfraUrls, unique_name: str) -> AsyncIterator[Rig]:
    async with asyncio.timeout(60), rider_service(infra, unique_name) as rig:
        yield rig


async def new_rider(rig: Rig) -> pb.Rider:
    return await rig.stub.CreateRider(
        pb.CreateRiderRequest(
            name="Ada", phone="+49151" + str(uuid.uuid4().int)[:8], password="correct horse battery"
        ),
        timeout=30,
    )


async def tokenize(rig: Rig, number: str) -> str:
    """What an app does with the provider's SDK: the card goes to the provider only."""
    method = await rig.stripe.v1.payment_methods.create_async(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    return str(method.id)


async def add_card(rig: Rig, rider_id: str, number: str = GOOD_CARD) -> pb.PaymentMethod:
    method_id = await tokenize(rig, number)
    return await rig.stub.AddPaymentMethod(
        pb.AddPaymentMethodRequest(rider_id=rider_id, payment_method_id=method_id), timeout=30
    )


def completed(trip_id: str, rider_id: str, amount: int = 1725) -> trip_events.TripCompleted:
    return trip_events.TripCompleted(
        trip_id=trip_id,
        rider_id=rider_id,
        driver_id="driver-1",
        fare=common_pb2.Money(amount_minor=amount, currency="EUR"),
    )


async def trip_payments(rig: Rig, rider_id: str, trip_id: str) -> list[pb.Payment]:
    reply = await rig.stub.ListTripPayments(
        pb.ListTripPaymentsRequest(rider_id=rider_id, trip_id=trip_id), timeout=10
    )
    return list(reply.payments)


async def settled(rig: Rig, rider_id: str, trip_id: str, status: int) -> pb.Payment:
    found: list[pb.Payment] = []

    async def done() -> bool:
        found[:] = await trip_payments(rig, rider_id, trip_id)
        return bool(found) and all(p.status == status for p in found)

    await eventually(done, timeout_s=60, every_s=0.2)
    return found[0]


async def intents_for(provider: stripe.StripeClient, payment_id: str) -> list[Any]:
    """Every PaymentIntent the provider holds for the payment (localstripe has no search)."""
    page = await provider.v1.payment_intents.list_async(params={"limit": 100})
    intents = list(page.data)
    while page.has_more:
        page = await provider.v1.payment_intents.list_async(
            params={"limit": 100, "starting_after": intents[-1].id}
        )
        intents += page.data
    return [i for i in intents if i.to_dict().get("metadata", {}).get("payment_id") == payment_id]


async def outbox_subjects(rig: Rig) -> list[str]:
    rows = await rig.db.fetch("SELECT subject FROM outbox ORDER BY id")
    return [r["subject"] for r in rows]


async def test_cards_are_added_listed_made_default_and_removed(rig: Rig) -> None:
    rider = await new_rider(rig)
    standing = await rig.stub.GetPaymentStanding(pb.GetPaymentStandingRequest(rider_id=rider.id))
    assert standing.block == pb.PAYMENT_BLOCK_METHOD_REQUIRED
    first = await add_card(rig, rider.id)
    second = await add_card(rig, rider.id, "5555555555554444")
    assert (first.brand, first.last4, first.exp_month, first.exp_year) == ("visa", "4242", 12, 2034)
    assert first.is_default and not second.is_default
    await rig.stub.SetDefaultPaymentMethod(
        pb.SetDefaultPaymentMethodRequest(rider_id=rider.id, payment_method_id=second.id)
    )
    listed = await rig.stub.ListPaymentMethods(pb.ListPaymentMethodsRequest(rider_id=rider.id))
    assert [(m.id, m.is_default) for m in listed.payment_methods] == [
        (second.id, True),
        (first.id, False),
    ]
    await rig.stub.RemovePaymentMethod(
        pb.RemovePaymentMethodRequest(rider_id=rider.id, payment_method_id=second.id)
    )
    listed = await rig.stub.ListPaymentMethods(pb.ListPaymentMethodsRequest(rider_id=rider.id))
    assert [(m.id, m.is_default) for m in listed.payment_methods] == [(first.id, True)]
    standing = await rig.stub.GetPaymentStanding(pb.GetPaymentStandingRequest(rider_id=rider.id))
    assert standing.block == pb.PAYMENT_BLOCK_NONE


async def test_a_refused_card_a_card_number_and_an_unknown_method_are_refused(rig: Rig) -> None:
    rider = await new_rider(rig)
    refused = await tokenize(rig, REFUSED_CARD)
    request = pb.AddPaymentMethodRequest(rider_id=rider.id, payment_method_id=refused)
    assert await grpc_status(rig.stub.AddPaymentMethod(request)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    request = pb.AddPaymentMethodRequest(rider_id=rider.id, payment_method_id=GOOD_CARD)
    assert await grpc_status(rig.stub.AddPaymentMethod(request)) == grpc.StatusCode.INVALID_ARGUMENT
    request = pb.AddPaymentMethodRequest(rider_id=rider.id, payment_method_id="pm_doesnotexist")
    assert await grpc_status(rig.stub.AddPaymentMethod(request)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    remove = pb.RemovePaymentMethodRequest(rider_id=rider.id, payment_method_id="pm_none")
    assert await grpc_status(rig.stub.RemovePaymentMethod(remove)) == grpc.StatusCode.NOT_FOUND


async def test_a_completed_trip_delivered_twice_is_charged_once_and_receipted_once(
    rig: Rig,
) -> None:
    rider = await new_rider(rig)
    await add_card(rig, rider.id)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    first = await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    # The same event redelivered, and a second, different event for the same completion.
    await publish_event(
        rig.js,
        events.TRIP_COMPLETED,
        completed(trip_id, rider.id),
        aggregate_id=trip_id,
        version=6,
        event_id=first.event_id,
        msg_id=f"{first.event_id}-again",
    )
    await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    assert (payment.amount.amount_minor, payment.card_last4) == (1725, "4242")
    await asyncio.sleep(1.0)  # let any wrong second charge happen before counting
    assert len(await trip_payments(rig, rider.id, trip_id)) == 1
    intents = await intents_for(rig.stripe, payment.id)
    assert [(i.status, i.amount) for i in intents] == [("succeeded", 1725)]
    assert (await outbox_subjects(rig)).count(events.RIDER_PAYMENT_SUCCEEDED) == 1


async def test_a_declined_card_ends_outstanding_and_a_new_card_settles_it(rig: Rig) -> None:
    rider = await new_rider(rig)
    await add_card(rig, rider.id, DECLINED_CARD)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_OUTSTANDING)
    assert payment.attempts == 2  # max_attempts in payment_settings
    assert payment.failure == "card_declined"
    assert events.RIDER_PAYMENT_FAILED in await outbox_subjects(rig)
    standing = await rig.stub.GetPaymentStanding(pb.GetPaymentStandingRequest(rider_id=rider.id))
    assert standing.block == pb.PAYMENT_BLOCK_OUTSTANDING
    assert standing.outstanding.amount_minor == 1725

    # Not asked to be the default: a card added to settle a debt is the one charged anyway.
    await add_card(rig, rider.id, GOOD_CARD)
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    assert payment.card_last4 == "4242"
    standing = await rig.stub.GetPaymentStanding(pb.GetPaymentStandingRequest(rider_id=rider.id))
    assert standing.block == pb.PAYMENT_BLOCK_NONE


async def test_a_cancellation_fee_is_charged(rig: Rig) -> None:
    rider = await new_rider(rig)
    await add_card(rig, rider.id)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    cancelled = trip_events.TripCancelled(
        trip_id=trip_id, rider_id=rider.id, fee=common_pb2.Money(amount_minor=500, currency="EUR")
    )
    await publish_event(rig.js, events.TRIP_CANCELLED, cancelled, aggregate_id=trip_id, version=4)
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    assert (payment.kind, payment.amount.amount_minor) == (pb.PAYMENT_KIND_CANCELLATION_FEE, 500)


async def test_refunds_never_exceed_the_charge(rig: Rig) -> None:
    rider = await new_rider(rig)
    await add_card(rig, rider.id)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    partial = await rig.stub.RefundPayment(
        pb.RefundPaymentRequest(payment_id=payment.id, amount_minor=700, reason="detour")
    )
    assert partial.refunded.amount_minor == 700
    too_much = pb.RefundPaymentRequest(payment_id=payment.id, amount_minor=1100)
    assert await grpc_status(rig.stub.RefundPayment(too_much)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    rest = await rig.stub.RefundPayment(pb.RefundPaymentRequest(payment_id=payment.id))
    assert rest.refunded.amount_minor == 1725
    assert [r.amount.amount_minor for r in rest.refunds] == [700, 1025]
    again = pb.RefundPaymentRequest(payment_id=payment.id, amount_minor=1)
    assert await grpc_status(rig.stub.RefundPayment(again)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await outbox_subjects(rig)).count(events.RIDER_PAYMENT_REFUNDED) == 2
    # The schema is this test's own: its takings are this charge and its refunds.
    takings = await rig.stub.GetTakings(pb.GetTakingsRequest())
    [eur] = takings.currencies
    assert (eur.currency, eur.charges, eur.charged_minor, eur.refunded_minor, eur.net_minor) == (
        "EUR",
        1,
        1725,
        1725,
        0,
    )


async def test_a_card_number_never_reaches_the_database_or_the_log(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rider = await new_rider(rig)
    # The app's side (the provider's SDK, which logs its request at DEBUG) is not ours.
    method_id = await tokenize(rig, GOOD_CARD)
    caplog.set_level(logging.DEBUG)
    await rig.stub.AddPaymentMethod(
        pb.AddPaymentMethodRequest(rider_id=rider.id, payment_method_id=method_id), timeout=30
    )
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    tables = [
        r["table_name"]
        for r in await rig.db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    ]
    for table in tables:
        dump = await rig.db.fetchval(
            f"SELECT coalesce(string_agg(t::text, '|'), '') FROM {table} t"
        )
        assert GOOD_CARD not in dump, table
        assert "4242 4242" not in dump, table
    assert caplog.records  # the service did log (its payments among them)
    assert GOOD_CARD not in caplog.text


async def test_refunds_left_pending_by_a_dead_asker_are_finished_once(rig: Rig) -> None:
    """A refund recorded before its provider call, its asker gone: one whose call never left
    is made by the worker; one the provider made is found there, never made twice."""
    rider = await new_rider(rig)
    await add_card(rig, rider.id)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    await publish_event(
        rig.js, events.TRIP_COMPLETED, completed(trip_id, rider.id), aggregate_id=trip_id, version=6
    )
    payment = await settled(rig, rider.id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
    store = PaymentStore(rig.db)
    intent = (await intents_for(rig.stripe, payment.id))[0]
    never_sent, sent = str(uuid.uuid4()), str(uuid.uuid4())
    async with rig.db.acquire() as conn, conn.transaction():
        for refund_id, amount in ((never_sent, 300), (sent, 200)):
            # What RiderService.RefundPayment commits before it calls the provider; the lease
            # already over, as if its process died a while ago.
            await store.reserve_refund(
                conn,
                payment.id,
                refund_id=refund_id,
                amount_minor=amount,
                reason="dead asker",
                lease=timedelta(0),
            )
    await rig.stripe.v1.refunds.create_async(
        params={"payment_intent": intent.id, "amount": 200, "metadata": {"refund_id": sent}}
    )

    async def finished() -> bool:
        [p] = await trip_payments(rig, rider.id, trip_id)
        return len(p.refunds) == 2 and not any(r.pending for r in p.refunds)

    await eventually(finished, timeout_s=60, every_s=0.3)
    made = await rig.stripe.v1.refunds.list_async(params={"payment_intent": intent.id})
    by_id = sorted(
        (r.to_dict()["metadata"]["refund_id"], r.amount) for r in made.data if r.metadata
    )
    assert by_id == sorted([(never_sent, 300), (sent, 200)])
    [p] = await trip_payments(rig, rider.id, trip_id)
    assert p.refunded.amount_minor == 500
    assert (await outbox_subjects(rig)).count(events.RIDER_PAYMENT_REFUNDED) == 2
