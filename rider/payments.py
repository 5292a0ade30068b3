"""Payment use cases of the rider service: cards, the charging saga, refunds.

The saga, once per charge (rider/billing.py has the states):

1. ``trip.completed`` (or a cancellation with a fee) writes a PENDING payment record in the
   same transaction that claims the event (RiderCommands.apply_trip): a redelivered event
   finds the event claimed, and a new event for the same trip and kind finds the record.
2. :class:`PaymentWorker` claims due records (CHARGING under a lease, committed), counts the
   attempt (committed), then calls the provider with the record's id and attempt in the
   metadata and ``<id>:<attempt>`` as the idempotency key.
3. The outcome and its event (``rider.payment_succeeded``, or after the last decline
   ``rider.payment_failed``) are committed together through the outbox.

A crash after 2 leaves the record CHARGING; once its lease runs out a worker reclaims it and
asks the provider first (``find_charge``): a charge that went through is recorded as it was,
one that never arrived is made then. So a ``kill -9`` anywhere charges once and forgets none.

Refunds follow the same rule: recorded (their amount no longer refundable) and committed
before the provider call, which carries the refund's id; one left pending by a dead process
is looked up at the provider by that id and finished, or made then, by the worker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from google.protobuf.message import Message

from protos import events
from rider import wire
from rider.billing import (
    ChargeOutcome,
    ChargeRequest,
    Payment,
    PaymentCommand,
    PaymentMethod,
    PaymentMethodRejectedError,
    PaymentStatus,
    RefundNotAllowedError,
    RetryPolicy,
    Standing,
    after_decline,
    check_method_id,
    next_status,
    refund_amount,
    standing,
)
from rider.payment_store import PaymentStore
from rider.provider import (
    MethodRejectedError,
    PaymentProvider,
    ProviderUnavailableError,
    RefundRejectedError,
)
from rideshare.faults import AFTER_CHARGE, crash_point
from rideshare.outbox import add_event

__all__ = ["PaymentCommands", "PaymentWorker", "WorkerPolicy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPolicy:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    lease_s: float = 60.0
    """How long a claim holds a charge; longer than a provider call's deadline."""
    poll_s: float = 1.0
    batch: int = 16


class PaymentCommands:
    """Cards and refunds, called by the gRPC servicer."""

    def __init__(
        self,
        store: PaymentStore,
        provider: PaymentProvider,
        wake: asyncio.Event,
        *,
        lease_s: float,
    ) -> None:
        self._store = store
        self._provider = provider
        self._wake = wake
        self._lease_s = lease_s

    async def add_method(
        self, rider_id: str, method_id: str, *, make_default: bool
    ) -> PaymentMethod:
        check_method_id(method_id)
        customer = await self._store.customer_of(rider_id)
        if customer is None:
            customer = await self._store.save_customer(
                rider_id, await self._provider.create_customer(rider_id=rider_id)
            )
        try:
            card = await self._provider.attach_method(customer_id=customer, method_id=method_id)
        except MethodRejectedError as exc:
            raise PaymentMethodRejectedError(f"the card was refused: {exc}") from None
        # A card added while a charge is outstanding settles it: it becomes the one charged.
        outstanding, _ = await self._store.outstanding_minor(rider_id)
        async with self._store.pool.acquire() as conn, conn.transaction():
            method = await self._store.add_method(
                conn, rider_id, card, make_default=make_default or outstanding > 0
            )
            settled = await self._store.settle_outstanding(conn, rider_id)
        if settled:
            logger.info(
                "rider %s added a card: %d outstanding charge(s) retried", rider_id, settled
            )
            self._wake.set()
        return method

    async def remove_method(self, rider_id: str, method_id: str) -> None:
        check_method_id(method_id)
        async with self._store.pool.acquire() as conn, conn.transaction():
            await self._store.remove_method(conn, rider_id, method_id)
        await self._provider.detach_method(method_id=method_id)

    async def set_default(self, rider_id: str, method_id: str) -> PaymentMethod:
        check_method_id(method_id)
        async with self._store.pool.acquire() as conn, conn.transaction():
            return await self._store.set_default(conn, rider_id, method_id)

    async def standing(self, rider_id: str) -> tuple[Standing, int, str]:
        outstanding, currency = await self._store.outstanding_minor(rider_id)
        default = await self._store.default_method(rider_id)
        verdict = standing(has_default_method=default is not None, outstanding_minor=outstanding)
        return verdict, outstanding, currency

    async def refund(self, payment_id: str, *, amount_minor: int, reason: str) -> Payment:
        """Refund part or all of a succeeded charge, crash-safe like a charge: the refund is
        recorded (its amount no longer refundable) and committed before the provider is
        asked with its id as key and metadata; a refund whose asker died is looked up and
        finished by the worker (:meth:`PaymentWorker.recover_refunds`)."""
        refund_id = str(uuid.uuid4())
        async with self._store.pool.acquire() as conn, conn.transaction():
            payment = await self._store.get(payment_id, conn)  # row lock: one refund at a time
            amount = refund_amount(payment, amount_minor)
            await self._store.reserve_refund(
                conn,
                payment_id,
                refund_id=refund_id,
                amount_minor=amount,
                reason=reason,
                lease=timedelta(seconds=self._lease_s),
            )
        try:
            provider_ref = await self._provider.refund(
                provider_ref=payment.provider_ref, amount_minor=amount, refund_id=refund_id
            )
        except RefundRejectedError as exc:
            await self._store.cancel_refund(refund_id)
            raise RefundNotAllowedError(f"the provider refused the refund: {exc}") from None
        done = await finish_refund(self._store, refund_id, provider_ref=provider_ref)
        return done or await self._store.get(payment_id)


async def finish_refund(
    store: PaymentStore, refund_id: str, *, provider_ref: str
) -> Payment | None:
    """Commit a refund the provider made, with its event; None if already committed."""
    async with store.pool.acquire() as conn, conn.transaction():
        payment = await store.complete_refund(conn, refund_id, provider_ref=provider_ref)
        if payment is None:
            return None
        amount = await conn.fetchval(
            "SELECT amount_minor FROM payment_refunds WHERE id = $1", refund_id
        )
        await add_event(
            conn,
            subject=events.RIDER_PAYMENT_REFUNDED,
            aggregate_id=payment.id,
            aggregate_version=payment.version,
            payload=wire.payment_refunded(payment, refund_id=refund_id, amount_minor=amount),
        )
    return payment


class PaymentWorker:
    """Charges due payments: one loop per service copy; copies share the work through
    ``FOR UPDATE SKIP LOCKED`` claims."""

    def __init__(
        self,
        store: PaymentStore,
        provider: PaymentProvider,
        *,
        policy: WorkerPolicy,
        wake: asyncio.Event,
    ) -> None:
        self._store = store
        self._provider = provider
        self._policy = policy
        self._wake = wake

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            claimed: list[Payment] = []
            try:
                claimed = await self._store.claim_due(
                    limit=self._policy.batch, lease=timedelta(seconds=self._policy.lease_s)
                )
            except Exception:
                logger.exception("claiming due payments failed; trying again")
            await self.recover_refunds()
            if claimed:
                # Per item: one charge failing never stops the others.
                await asyncio.gather(*(self._settle(p) for p in claimed))
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(self._policy.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def recover_refunds(self) -> None:
        """Finish refunds whose asker died: made at the provider (found by their id) or not
        (asked again, same key)."""
        try:
            stale = await self._store.claim_stale_refunds(
                limit=self._policy.batch, lease=timedelta(seconds=self._policy.lease_s)
            )
        except Exception:
            logger.exception("claiming stale refunds failed; trying again")
            return
        for row in stale:
            try:
                found = await self._provider.find_refund(
                    provider_ref=row["provider_ref"], refund_id=row["id"]
                )
                if found is None:
                    found = await self._provider.refund(
                        provider_ref=row["provider_ref"],
                        amount_minor=row["amount_minor"],
                        refund_id=row["id"],
                    )
                else:
                    logger.info("refund %s: recovered from the provider", row["id"])
                await finish_refund(self._store, row["id"], provider_ref=found)
            except RefundRejectedError as exc:
                logger.warning("refund %s refused by the provider: %s", row["id"], exc)
                await self._store.cancel_refund(row["id"])
            except Exception:
                logger.exception("refund %s not finished; its lease will bring it back", row["id"])

    async def _settle(self, payment: Payment) -> None:
        try:
            await self._charge(payment)
        except ProviderUnavailableError as exc:
            # The lease ends it: the next claim looks the attempt up before trying again.
            logger.warning("payment %s: provider unavailable (%s)", payment.id, exc)
        except Exception:
            logger.exception(
                "payment %s failed unexpectedly; its lease will bring it back", payment.id
            )

    async def _charge(self, payment: Payment) -> None:
        outcome: ChargeOutcome | None = None
        if payment.status is PaymentStatus.CHARGING:
            # Reclaimed: the last charger died. Did its attempt reach the provider?
            next_status(payment.status, PaymentCommand.RECLAIM)
            outcome = await self._provider.find_charge(
                payment_id=payment.id, attempt=payment.attempts
            )
            if outcome is not None:
                logger.info(
                    "payment %s: recovered attempt %d from the provider",
                    payment.id,
                    payment.attempts,
                )
        else:
            next_status(payment.status, PaymentCommand.CLAIM)
        method = await self._store.default_method(payment.rider_id)
        customer = await self._store.customer_of(payment.rider_id)
        last4 = method.card.last4 if method else ""
        if outcome is None:
            if method is None or customer is None:
                outcome = ChargeOutcome(
                    succeeded=False, provider_ref="", reason="no_payment_method"
                )
            else:
                attempt = await self._store.start_attempt(payment.id, version=payment.version + 1)
                outcome = await self._provider.charge(
                    ChargeRequest(
                        payment_id=payment.id,
                        attempt=attempt,
                        trip_id=payment.trip_id,
                        customer_id=customer,
                        method_id=method.card.method_id,
                        amount_minor=payment.amount_minor,
                        currency=payment.currency,
                    )
                )
                crash_point(AFTER_CHARGE)  # tests/integration/test_payments_crash.py
        await self._record(payment, outcome, last4=last4)

    async def _record(self, payment: Payment, outcome: ChargeOutcome, *, last4: str) -> None:
        policy = self._policy.retry
        failures = payment.failures
        if outcome.succeeded:
            status = next_status(PaymentStatus.CHARGING, PaymentCommand.SUCCEED)
        else:
            failures += 1
            status = next_status(PaymentStatus.CHARGING, after_decline(failures, policy))
        async with self._store.pool.acquire() as conn, conn.transaction():
            done = await self._store.finish(
                conn,
                payment.id,
                status=status,
                card_last4=last4,
                failure=outcome.reason,
                provider_ref=outcome.provider_ref,
                failures=failures,
                due_in=policy.delay(failures) if status is PaymentStatus.PENDING else timedelta(0),
            )
            payload: Message
            if status is PaymentStatus.SUCCEEDED:
                subject, payload = events.RIDER_PAYMENT_SUCCEEDED, wire.payment_succeeded(done)
            elif status is PaymentStatus.OUTSTANDING:
                subject, payload = events.RIDER_PAYMENT_FAILED, wire.payment_failed(done)
            else:
                logger.info(
                    "payment %s declined (%s); retry %d", payment.id, outcome.reason, failures
                )
                return
            await add_event(
                conn,
                subject=subject,
                aggregate_id=done.id,
                aggregate_version=done.version,
                payload=payload,
            )
