"""The payment provider: what the rider service asks of it, and Stripe's answer to that.

:class:`PaymentProvider` is the port; :class:`StripeProvider` the adapter on the official
``stripe`` SDK, talking to real Stripe (``RIDESHARE_STRIPE_API_BASE`` and
``RIDESHARE_STRIPE_API_KEY``) or to the embedded localstripe. It uses the SDK's async client
over httpx, so no thread is held per call, and every call has a deadline: httpx's timeout
and ``asyncio.timeout`` around it, and no retries inside the SDK (the payment worker decides
when to try again, rider/payments.py).

Exactly-once is NOT the provider's job: localstripe ignores ``Idempotency-Key``. Every charge
carries the payment record's id and attempt number in its metadata, so that after a crash
between the call and the commit :meth:`StripeProvider.find_charge` can tell whether that
attempt reached the provider and how it ended.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from rider.billing import CardDetails, ChargeOutcome, ChargeRequest

__all__ = [
    "MethodRejectedError",
    "PaymentProvider",
    "ProviderUnavailableError",
    "RefundRejectedError",
    "StripeProvider",
]

logger = logging.getLogger(__name__)

# PaymentIntent statuses that mean the attempt is over and took no money.
_FAILED = frozenset({"requires_payment_method", "canceled"})


class ProviderUnavailableError(Exception):
    """The provider did not answer in time, or answered with a server error: try later."""


class MethodRejectedError(Exception):
    """The provider refused a payment method (unknown id, declined when attached)."""


class RefundRejectedError(Exception):
    """The provider refused a refund (the charge is not refundable there)."""


class PaymentProvider(Protocol):
    """What the rider service needs from a payment provider."""

    async def create_customer(self, *, rider_id: str) -> str:
        """A new customer for the rider; its id."""
        ...

    async def attach_method(self, *, customer_id: str, method_id: str) -> CardDetails:
        """Attach a tokenized card to the customer; its display fields."""
        ...

    async def detach_method(self, *, method_id: str) -> None:
        """Detach a card from its customer."""
        ...

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge off-session; a decline is an outcome, not an error."""
        ...

    async def find_charge(self, *, payment_id: str, attempt: int) -> ChargeOutcome | None:
        """How a charge of ``payment_id`` ended: a succeeded attempt if any, else attempt
        ``attempt`` if it reached the provider, else None."""
        ...

    async def refund(self, *, provider_ref: str, amount_minor: int, refund_id: str) -> str:
        """Refund ``amount_minor`` of the charge ``provider_ref``; the refund's id."""
        ...

    async def find_refund(self, *, provider_ref: str, refund_id: str) -> str | None:
        """The provider's id of refund ``refund_id`` of charge ``provider_ref``, if made."""
        ...


@dataclass(frozen=True)
class _Deadline:
    seconds: float


class StripeProvider:
    """:class:`PaymentProvider` on the official SDK's async client."""

    def __init__(self, *, api_base: str, api_key: str, timeout_s: float) -> None:
        self._timeout = _Deadline(timeout_s)
        self._http = stripe.HTTPXClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=self._http,
            max_network_retries=0,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _call(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout.seconds):
                return await call
        except TimeoutError as exc:
            raise ProviderUnavailableError(
                f"{what}: no answer in {self._timeout.seconds}s"
            ) from exc
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise ProviderUnavailableError(f"{what}: {exc.user_message or exc}") from exc
        except stripe.APIError as exc:
            raise ProviderUnavailableError(f"{what}: {exc.user_message or exc}") from exc

    async def create_customer(self, *, rider_id: str) -> str:
        customer = await self._call(
            "create customer",
            self._client.v1.customers.create_async(params={"metadata": {"rider_id": rider_id}}),
        )
        return str(customer.id)

    async def attach_method(self, *, customer_id: str, method_id: str) -> CardDetails:
        try:
            method = await self._call(
                "attach payment method",
                self._client.v1.payment_methods.attach_async(
                    method_id, params={"customer": customer_id}
                ),
            )
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            raise MethodRejectedError(exc.user_message or str(exc)) from exc
        card = method.card
        if card is None:
            raise MethodRejectedError(f"{method_id} is not a card")
        return CardDetails(
            method_id=str(method.id),
            brand=str(card.brand),
            last4=str(card.last4),
            exp_month=int(card.exp_month),
            exp_year=int(card.exp_year),
        )

    async def detach_method(self, *, method_id: str) -> None:
        try:
            await self._call(
                "detach payment method",
                self._client.v1.payment_methods.detach_async(method_id),
            )
        except stripe.InvalidRequestError as exc:
            # Already detached or unknown there: what the caller wanted.
            logger.info("detach %s: %s", method_id, exc.user_message or exc)

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        params: Any = {
            "amount": request.amount_minor,
            "currency": request.currency.lower(),
            "customer": request.customer_id,
            "payment_method": request.method_id,
            "confirm": True,
            "off_session": True,
            "metadata": {
                "payment_id": request.payment_id,
                "attempt": str(request.attempt),
                "trip_id": request.trip_id,
            },
        }
        try:
            intent = await self._call(
                "charge",
                self._client.v1.payment_intents.create_async(
                    params=params,
                    options={"idempotency_key": request.idempotency_key},
                ),
            )
        except stripe.CardError as exc:
            return ChargeOutcome(
                succeeded=False,
                provider_ref=_intent_id_of(exc),
                reason=str(exc.code or "card_declined"),
            )
        except stripe.InvalidRequestError as exc:
            return ChargeOutcome(succeeded=False, provider_ref="", reason=str(exc.code or exc))
        return _outcome(intent)

    async def find_charge(self, *, payment_id: str, attempt: int) -> ChargeOutcome | None:
        intents = await self._intents_of(payment_id)
        for intent in intents:
            if intent.status == "succeeded":
                return _outcome(intent)
        for intent in intents:
            if _metadata(intent).get("attempt") == str(attempt):
                return _outcome(intent)
        return None

    async def _intents_of(self, payment_id: str) -> list[Any]:
        """The PaymentIntents whose metadata names ``payment_id``: Stripe's search API where
        there is one; localstripe has none (404), so there every intent is listed."""
        try:
            found = await self._call(
                "search payment intents",
                self._client.v1.payment_intents.search_async(
                    params={"query": f"metadata['payment_id']:'{payment_id}'"}
                ),
            )
            return list(found.data)
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise
        matches: list[Any] = []
        after: str | None = None
        while True:
            params: Any = {"limit": 100, **({"starting_after": after} if after else {})}
            page = await self._call(
                "list payment intents", self._client.v1.payment_intents.list_async(params=params)
            )
            matches += [i for i in page.data if _metadata(i).get("payment_id") == payment_id]
            if not page.has_more or not page.data:
                return matches
            after = page.data[-1].id

    async def refund(self, *, provider_ref: str, amount_minor: int, refund_id: str) -> str:
        try:
            refund = await self._call(
                "refund",
                self._client.v1.refunds.create_async(
                    params={
                        "payment_intent": provider_ref,
                        "amount": amount_minor,
                        "metadata": {"refund_id": refund_id},
                    },
                    options={"idempotency_key": refund_id},
                ),
            )
        except stripe.InvalidRequestError as exc:
            raise RefundRejectedError(exc.user_message or str(exc)) from exc
        return str(refund.id)

    async def find_refund(self, *, provider_ref: str, refund_id: str) -> str | None:
        page = await self._call(
            "list refunds",
            self._client.v1.refunds.list_async(
                params={"payment_intent": provider_ref, "limit": 100}
            ),
        )
        for refund in page.data:
            if _metadata(refund).get("refund_id") == refund_id:
                return str(refund.id)
        return None


def _outcome(intent: Any) -> ChargeOutcome:
    if intent.status == "succeeded":
        return ChargeOutcome(succeeded=True, provider_ref=str(intent.id), reason="")
    error = intent.to_dict().get("last_payment_error") or {}
    reason = str(error.get("code") or intent.status) if intent.status in _FAILED else intent.status
    return ChargeOutcome(succeeded=False, provider_ref=str(intent.id), reason=reason)


def _metadata(intent: Any) -> dict[str, Any]:
    return dict(intent.to_dict().get("metadata") or {})


def _intent_id_of(exc: stripe.CardError) -> str:
    error = exc.error
    intent = getattr(error, "payment_intent", None) if error is not None else None
    return str(intent.to_dict().get("id", "")) if intent else ""
