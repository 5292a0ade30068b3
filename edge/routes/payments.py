"""Payments: a rider's cards, a trip's charges and refunds, and the check before booking.

Cards are tokenized by the app with the provider's SDK; the edge and the services only ever
see the provider's payment-method id. Whether a rider may book as far as payment goes is the
rider service's answer (GetPaymentStanding), asked by the edge before RequestTrip
(:func:`check_may_book`): the edge is where an app's request becomes calls, the rider service
owns the cards and charges, and the trip service keeps no synchronous dependency on another
service in its busiest write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from google.protobuf.timestamp_pb2 import Timestamp

from edge.deps import Admin, Ctx, Rider
from edge.errors import ApiError
from edge.models import (
    NO_NUL,
    CurrencyTakingsOut,
    Money,
    PaymentKindName,
    PaymentMethodIn,
    PaymentMethodOut,
    PaymentMethodsOut,
    PaymentOut,
    PaymentsOut,
    PaymentStatusName,
    RefundIn,
    RefundOut,
    TakingsOut,
)
from edge.routes.common import ERRORS
from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2

__all__ = ["check_may_book", "router"]

router = APIRouter(prefix="/v1", tags=["payments"], responses=ERRORS)

MethodId = Annotated[str, Path(min_length=4, max_length=120, pattern=r"^pm_[A-Za-z0-9]+$")]
AnyId = Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)]

_KINDS: dict[int, PaymentKindName] = {
    rider_pb2.PAYMENT_KIND_FARE: "fare",
    rider_pb2.PAYMENT_KIND_CANCELLATION_FEE: "cancellation_fee",
}
_STATUSES: dict[int, PaymentStatusName] = {
    rider_pb2.PAYMENT_STATUS_PENDING: "pending",
    rider_pb2.PAYMENT_STATUS_CHARGING: "charging",
    rider_pb2.PAYMENT_STATUS_SUCCEEDED: "succeeded",
    rider_pb2.PAYMENT_STATUS_OUTSTANDING: "outstanding",
}


async def check_may_book(ctx: Ctx, rider_id: str) -> None:
    """409 ``payment_method_required`` or ``payment_outstanding`` unless the rider may book."""
    standing = await ctx.rider.GetPaymentStanding(
        rider_pb2.GetPaymentStandingRequest(rider_id=rider_id)
    )
    if standing.block == rider_pb2.PAYMENT_BLOCK_METHOD_REQUIRED:
        raise ApiError(
            409,
            "payment_method_required",
            "add a payment method (POST /v1/me/payment-methods) before booking a trip",
        )
    if standing.block == rider_pb2.PAYMENT_BLOCK_OUTSTANDING:
        owed = standing.outstanding
        raise ApiError(
            409,
            "payment_outstanding",
            f"a charge of {owed.amount_minor} {owed.currency} (minor units) is outstanding: "
            "add a payment method to settle it before booking a trip",
        )


def _when(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _money(m: common_pb2.Money) -> Money:
    return Money(amount_minor=m.amount_minor, currency=m.currency)


def _method_out(m: rider_pb2.PaymentMethod) -> PaymentMethodOut:
    return PaymentMethodOut(
        id=m.id,
        brand=m.brand,
        last4=m.last4,
        exp_month=m.exp_month,
        exp_year=m.exp_year,
        default=m.is_default,
        created_at=_when(m.created_at, m.HasField("created_at")),
    )


def _payment_out(p: rider_pb2.Payment) -> PaymentOut:
    return PaymentOut(
        id=p.id,
        trip_id=p.trip_id,
        kind=_KINDS.get(p.kind),
        status=_STATUSES.get(p.status),
        amount=_money(p.amount),
        card_last4=p.card_last4 or None,
        attempts=p.attempts,
        failure=p.failure or None,
        refunded=_money(p.refunded),
        refunds=[
            RefundOut(
                id=r.id,
                amount=_money(r.amount),
                reason=r.reason,
                pending=r.pending,
                created_at=_when(r.created_at, r.HasField("created_at")),
            )
            for r in p.refunds
        ],
        created_at=_when(p.created_at, p.HasField("created_at")),
    )


@router.post("/me/payment-methods", status_code=201, response_model=PaymentMethodOut)
async def add_payment_method(body: PaymentMethodIn, rider: Rider, ctx: Ctx) -> PaymentMethodOut:
    """Add a card the app tokenized with the provider; the first one is the default. An
    outstanding charge is tried again on it. 409 ``failed_precondition`` when the provider
    refuses the card."""
    method = await ctx.rider.AddPaymentMethod(
        rider_pb2.AddPaymentMethodRequest(
            rider_id=rider.sub, payment_method_id=body.payment_method_id, make_default=body.default
        )
    )
    return _method_out(method)


@router.get("/me/payment-methods", response_model=PaymentMethodsOut)
async def list_payment_methods(rider: Rider, ctx: Ctx) -> PaymentMethodsOut:
    """The rider's cards: brand, last 4 and expiry only."""
    reply = await ctx.rider.ListPaymentMethods(
        rider_pb2.ListPaymentMethodsRequest(rider_id=rider.sub)
    )
    return PaymentMethodsOut(payment_methods=[_method_out(m) for m in reply.payment_methods])


@router.delete("/me/payment-methods/{method_id}", status_code=204)
async def remove_payment_method(method_id: MethodId, rider: Rider, ctx: Ctx) -> Response:
    """Remove a card; when it was the default, the newest other one becomes the default."""
    await ctx.rider.RemovePaymentMethod(
        rider_pb2.RemovePaymentMethodRequest(rider_id=rider.sub, payment_method_id=method_id)
    )
    return Response(status_code=204)


@router.post("/me/payment-methods/{method_id}/default", response_model=PaymentMethodOut)
async def make_default(method_id: MethodId, rider: Rider, ctx: Ctx) -> PaymentMethodOut:
    """Make a card the one charged."""
    method = await ctx.rider.SetDefaultPaymentMethod(
        rider_pb2.SetDefaultPaymentMethodRequest(rider_id=rider.sub, payment_method_id=method_id)
    )
    return _method_out(method)


@router.get("/me/trips/{trip_id}/payments", response_model=PaymentsOut)
async def trip_payments(trip_id: AnyId, rider: Rider, ctx: Ctx) -> PaymentsOut:
    """What a trip of the rider's was charged (fare, cancellation fee), with its refunds."""
    reply = await ctx.rider.ListTripPayments(
        rider_pb2.ListTripPaymentsRequest(rider_id=rider.sub, trip_id=trip_id)
    )
    return PaymentsOut(payments=[_payment_out(p) for p in reply.payments])


@router.post(
    "/admin/payments/{payment_id}/refunds",
    status_code=201,
    response_model=PaymentOut,
    tags=["admin"],
)
async def refund(payment_id: AnyId, body: RefundIn, _: Admin, ctx: Ctx) -> PaymentOut:
    """Refund part or all of a succeeded charge; 409 ``failed_precondition`` when the amount
    exceeds what is left to refund or the charge did not succeed."""
    payment = await ctx.rider.RefundPayment(
        rider_pb2.RefundPaymentRequest(
            payment_id=payment_id, amount_minor=body.amount_minor, reason=body.reason
        )
    )
    return _payment_out(payment)


@router.get("/admin/takings", response_model=TakingsOut, tags=["admin"])
async def takings(_: Admin, ctx: Ctx) -> TakingsOut:
    """What riders paid, per currency: charged, refunded, net, and what is outstanding."""
    reply = await ctx.rider.GetTakings(rider_pb2.GetTakingsRequest())
    return TakingsOut(
        currencies=[
            CurrencyTakingsOut(
                currency=c.currency,
                charges=c.charges,
                charged_minor=c.charged_minor,
                refunded_minor=c.refunded_minor,
                net_minor=c.net_minor,
                outstanding_charges=c.outstanding_charges,
                outstanding_minor=c.outstanding_minor,
            )
            for c in reply.currencies
        ]
    )
