"""The rules of charging riders: payment methods, a charge's life, retries and refunds. Pure.

A charge (a trip's fare or its cancellation fee) is one payment record per (trip, kind),
written before the provider is called. Its life is the table :data:`TRANSITIONS`:

    PENDING --claim--> CHARGING --succeed--> SUCCEEDED
                         |  \\--decline (attempts left)--> PENDING (after a backoff)
                         |   \\-decline (none left)-----> OUTSTANDING --new method--> PENDING
                         \\--reclaim (lease ran out: the charger died)--> CHARGING

CHARGING holds a lease: a worker that dies mid-call leaves the record CHARGING, and once the
lease runs out another worker reclaims it and first asks the provider how that attempt ended
(rider/payments.py), so a crash between the call and the commit never charges twice.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from rider.domain import RiderError

__all__ = [
    "TRANSITIONS",
    "CardDetails",
    "ChargeOutcome",
    "ChargeRequest",
    "InvalidPaymentError",
    "Payment",
    "PaymentCommand",
    "PaymentKind",
    "PaymentMethod",
    "PaymentMethodNotFoundError",
    "PaymentMethodRejectedError",
    "PaymentNotFoundError",
    "PaymentStatus",
    "RefundNotAllowedError",
    "RetryPolicy",
    "Standing",
    "after_decline",
    "check_method_id",
    "next_status",
    "refund_amount",
    "standing",
]

# Stripe's payment-method ids: "pm_" and letters/digits. Anything else (a card number above
# all) is refused before it goes anywhere.
_METHOD_ID = re.compile(r"pm_[A-Za-z0-9]{1,100}")


class InvalidPaymentError(RiderError):
    """Malformed payment input: a payment-method id, a refund amount."""


class PaymentMethodNotFoundError(RiderError):
    """The rider has no payment method with this id."""


class PaymentMethodRejectedError(RiderError):
    """The provider refused the payment method (unknown there, or declined when added)."""


class PaymentNotFoundError(RiderError):
    """No payment has this id."""


class RefundNotAllowedError(RiderError):
    """The charge did not succeed, or the refund exceeds what is left of it."""


class PaymentKind(enum.IntEnum):
    """What a payment is for (values are rider.v1.PaymentKind)."""

    FARE = 1
    CANCELLATION_FEE = 2


class PaymentStatus(enum.IntEnum):
    """Where a charge is (values are rider.v1.PaymentStatus)."""

    PENDING = 1
    CHARGING = 2
    SUCCEEDED = 3
    OUTSTANDING = 4


class PaymentCommand(enum.Enum):
    CLAIM = "claim"
    RECLAIM = "reclaim"
    SUCCEED = "succeed"
    RETRY = "retry"
    GIVE_UP = "give_up"
    SETTLE = "settle"


TRANSITIONS: dict[PaymentStatus, dict[PaymentCommand, PaymentStatus]] = {
    PaymentStatus.PENDING: {PaymentCommand.CLAIM: PaymentStatus.CHARGING},
    PaymentStatus.CHARGING: {
        PaymentCommand.RECLAIM: PaymentStatus.CHARGING,
        PaymentCommand.SUCCEED: PaymentStatus.SUCCEEDED,
        PaymentCommand.RETRY: PaymentStatus.PENDING,
        PaymentCommand.GIVE_UP: PaymentStatus.OUTSTANDING,
    },
    PaymentStatus.OUTSTANDING: {PaymentCommand.SETTLE: PaymentStatus.PENDING},
    PaymentStatus.SUCCEEDED: {},
}


def next_status(status: PaymentStatus, command: PaymentCommand) -> PaymentStatus:
    """The status after ``command``; a pair the table lacks is a ValueError naming both."""
    try:
        return TRANSITIONS[status][command]
    except KeyError:
        raise ValueError(f"cannot {command.value} when status={status.name}") from None


def check_method_id(method_id: str) -> str:
    """``method_id`` if it is a provider payment-method id, else InvalidPaymentError (the
    message never repeats the input: it might be a card number)."""
    if not _METHOD_ID.fullmatch(method_id):
        raise InvalidPaymentError(
            "payment_method_id must be the provider's payment-method id (pm_...)"
        )
    return method_id


@dataclass(frozen=True)
class CardDetails:
    """What the provider tells about a card, and all the service keeps of it."""

    method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class PaymentMethod:
    card: CardDetails
    is_default: bool
    created_at: datetime


@dataclass(frozen=True)
class ChargeRequest:
    """One attempt of one payment, as sent to the provider."""

    payment_id: str
    attempt: int
    trip_id: str
    customer_id: str
    method_id: str
    amount_minor: int
    currency: str

    @property
    def idempotency_key(self) -> str:
        # Per attempt: a retry after a decline is a new charge, a resend of the same attempt
        # is not (for a provider that honours the key; localstripe does not, see provider.py).
        return f"{self.payment_id}:{self.attempt}"


@dataclass(frozen=True)
class ChargeOutcome:
    succeeded: bool
    provider_ref: str  # the provider's id of the charge ("pi_..."); "" if none was made
    reason: str  # why it failed; "" when it succeeded


@dataclass(frozen=True)
class Refund:
    id: str
    amount_minor: int
    reason: str
    created_at: datetime
    pending: bool = False  # recorded, the provider's answer not yet


@dataclass(frozen=True)
class Payment:
    id: str
    trip_id: str
    rider_id: str
    kind: PaymentKind
    status: PaymentStatus
    amount_minor: int
    currency: str
    attempts: int
    failures: int
    card_last4: str
    failure: str
    provider_ref: str
    refunded_minor: int  # refunds done and pending: what is no longer refundable
    version: int
    created_at: datetime
    updated_at: datetime
    refunds: tuple[Refund, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a charge gets before it is outstanding, and the waits between them:
    ``first_delay_s`` times ``factor`` per failure, at most ``max_delay_s``."""

    max_attempts: int = 4
    first_delay_s: float = 30.0
    factor: float = 4.0
    max_delay_s: float = 3600.0

    def delay(self, failures: int) -> timedelta:
        seconds = self.first_delay_s * self.factor ** max(failures - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay_s))


def after_decline(failures: int, policy: RetryPolicy) -> PaymentCommand:
    """RETRY while attempts are left (``failures`` counts this one), else GIVE_UP."""
    return PaymentCommand.RETRY if failures < policy.max_attempts else PaymentCommand.GIVE_UP


def refund_amount(payment: Payment, requested_minor: int) -> int:
    """What a refund of ``requested_minor`` (0: all that is left) refunds; never more than
    was charged and not yet refunded."""
    if requested_minor < 0:
        raise InvalidPaymentError("amount_minor must not be negative")
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise RefundNotAllowedError(f"payment {payment.id} is {payment.status.name.lower()}")
    left = payment.amount_minor - payment.refunded_minor
    if left <= 0:
        raise RefundNotAllowedError(f"payment {payment.id} is refunded in full")
    amount = requested_minor or left
    if amount > left:
        raise RefundNotAllowedError(
            f"refund of {amount} exceeds the {left} left of payment {payment.id}"
        )
    return amount


class Standing(enum.IntEnum):
    """Whether a rider may book, as payment goes (values are rider.v1.PaymentBlock)."""

    OK = 1
    METHOD_REQUIRED = 2
    OUTSTANDING = 3


def standing(*, has_default_method: bool, outstanding_minor: int) -> Standing:
    """An outstanding charge blocks first: a new method is how it is settled."""
    if outstanding_minor > 0:
        return Standing.OUTSTANDING
    if not has_default_method:
        return Standing.METHOD_REQUIRED
    return Standing.OK
