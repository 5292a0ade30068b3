"""The rules of charging riders (rider/billing.py), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rider.billing import (
    TRANSITIONS,
    InvalidPaymentError,
    Payment,
    PaymentCommand,
    PaymentKind,
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

S, C = PaymentStatus, PaymentCommand
# Written out by hand, apart from the table it checks.
EXPECTED = {
    (S.PENDING, C.CLAIM): S.CHARGING,
    (S.CHARGING, C.RECLAIM): S.CHARGING,
    (S.CHARGING, C.SUCCEED): S.SUCCEEDED,
    (S.CHARGING, C.RETRY): S.PENDING,
    (S.CHARGING, C.GIVE_UP): S.OUTSTANDING,
    (S.OUTSTANDING, C.SETTLE): S.PENDING,
}


@pytest.mark.parametrize("status", list(PaymentStatus))
@pytest.mark.parametrize("command", list(PaymentCommand))
def test_every_status_and_command_pair_matches_the_written_table(
    status: PaymentStatus, command: PaymentCommand
) -> None:
    expected = EXPECTED.get((status, command))
    if expected is None:
        with pytest.raises(ValueError, match=f"cannot {command.value} when status="):
            next_status(status, command)
    else:
        assert next_status(status, command) is expected


def test_a_succeeded_charge_is_final_and_every_other_status_can_reach_it() -> None:
    assert TRANSITIONS[S.SUCCEEDED] == {}
    reach = {S.SUCCEEDED}
    for _ in range(len(PaymentStatus)):
        reach |= {s for s, moves in TRANSITIONS.items() if set(moves.values()) & reach}
    assert reach == set(PaymentStatus)


def test_declines_are_retried_with_growing_waits_until_the_attempts_run_out() -> None:
    policy = RetryPolicy(max_attempts=3, first_delay_s=10, factor=4, max_delay_s=100)
    assert [after_decline(n, policy) for n in (1, 2, 3)] == [C.RETRY, C.RETRY, C.GIVE_UP]
    assert [policy.delay(n) for n in (1, 2, 3)] == [
        timedelta(seconds=10),
        timedelta(seconds=40),
        timedelta(seconds=100),
    ]


@pytest.mark.parametrize("text", ["pm_1AbC", "pm_" + "x" * 100], ids=["short", "longest"])
def test_a_provider_method_id_is_accepted(text: str) -> None:
    assert check_method_id(text) == text


@pytest.mark.parametrize(
    "text",
    ["", "4242424242424242", "4242 4242 4242 4242", "pm_", "pm_a-b", "cus_1", "pm_" + "x" * 101],
)
def test_anything_else_is_refused_without_repeating_it(text: str) -> None:
    with pytest.raises(InvalidPaymentError) as caught:
        check_method_id(text)
    assert "4242" not in str(caught.value)


def _payment(status: PaymentStatus = S.SUCCEEDED, *, refunded: int = 0) -> Payment:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Payment(
        id="p1",
        trip_id="t1",
        rider_id="r1",
        kind=PaymentKind.FARE,
        status=status,
        amount_minor=1000,
        currency="EUR",
        attempts=1,
        failures=0,
        card_last4="4242",
        failure="",
        provider_ref="pi_1",
        refunded_minor=refunded,
        version=3,
        created_at=now,
        updated_at=now,
    )


def test_a_refund_is_at_most_what_is_left_and_zero_means_all_of_it() -> None:
    assert refund_amount(_payment(), 300) == 300
    assert refund_amount(_payment(refunded=300), 0) == 700
    assert refund_amount(_payment(refunded=300), 700) == 700
    with pytest.raises(RefundNotAllowedError, match="exceeds the 700 left"):
        refund_amount(_payment(refunded=300), 701)
    with pytest.raises(RefundNotAllowedError, match="refunded in full"):
        refund_amount(_payment(refunded=1000), 0)
    with pytest.raises(InvalidPaymentError):
        refund_amount(_payment(), -1)


@pytest.mark.parametrize("status", [S.PENDING, S.CHARGING, S.OUTSTANDING])
def test_only_a_succeeded_charge_is_refunded(status: PaymentStatus) -> None:
    with pytest.raises(RefundNotAllowedError):
        refund_amount(_payment(status), 1)


def test_an_outstanding_charge_blocks_before_a_missing_method() -> None:
    assert standing(has_default_method=False, outstanding_minor=5) is Standing.OUTSTANDING
    assert standing(has_default_method=True, outstanding_minor=5) is Standing.OUTSTANDING
    assert standing(has_default_method=False, outstanding_minor=0) is Standing.METHOD_REQUIRED
    assert standing(has_default_method=True, outstanding_minor=0) is Standing.OK
