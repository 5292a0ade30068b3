"""asyncpg adapter of the payment tables (migrations/0002_payments.sql): customers, cards,
charges and refunds. Rows in, rider.billing objects out; methods taking ``conn`` run in the
caller's transaction."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from rider.billing import (
    CardDetails,
    Payment,
    PaymentKind,
    PaymentMethod,
    PaymentMethodNotFoundError,
    PaymentNotFoundError,
    PaymentStatus,
    Refund,
)

__all__ = ["PaymentStore"]

_PAYMENT = (
    "id, trip_id, rider_id, kind, status, amount_minor, currency, attempts, failures, "
    "card_last4, failure, provider_ref, refunded_minor, version, created_at, updated_at"
)
_METHOD = "method_id, brand, last4, exp_month, exp_year, is_default, created_at"


class PaymentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    # -- customers and cards ---------------------------------------------------------------

    async def customer_of(self, rider_id: str) -> str | None:
        value = await self._pool.fetchval(
            "SELECT customer_id FROM payment_customers WHERE rider_id = $1", rider_id
        )
        return None if value is None else str(value)

    async def save_customer(self, rider_id: str, customer_id: str) -> str:
        """Record the rider's customer; the one recorded first wins (two concurrent first
        cards both created one: the loser's stays unused at the provider)."""
        value = await self._pool.fetchval(
            "INSERT INTO payment_customers (rider_id, customer_id) VALUES ($1, $2) "
            "ON CONFLICT (rider_id) DO UPDATE SET rider_id = EXCLUDED.rider_id "
            "RETURNING customer_id",
            rider_id,
            customer_id,
        )
        return str(value)

    async def add_method(
        self, conn: asyncpg.Connection, rider_id: str, card: CardDetails, *, make_default: bool
    ) -> PaymentMethod:
        """Insert (or refresh) the card; it becomes the default when asked to or when the
        rider has none."""
        has_default = await conn.fetchval(
            "SELECT true FROM payment_methods WHERE rider_id = $1 AND is_default", rider_id
        )
        default = make_default or not has_default
        if default:
            await conn.execute(
                "UPDATE payment_methods SET is_default = false WHERE rider_id = $1 AND is_default",
                rider_id,
            )
        row = await conn.fetchrow(
            "INSERT INTO payment_methods "
            "(method_id, rider_id, brand, last4, exp_month, exp_year, is_default) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (method_id) DO UPDATE SET is_default = "
            "payment_methods.is_default OR EXCLUDED.is_default "
            f"WHERE payment_methods.rider_id = EXCLUDED.rider_id RETURNING {_METHOD}",
            card.method_id,
            rider_id,
            card.brand,
            card.last4,
            card.exp_month,
            card.exp_year,
            default,
        )
        if row is None:  # the id belongs to another rider
            raise PaymentMethodNotFoundError(f"no payment method {card.method_id!r}")
        return _method(row)

    async def methods(self, rider_id: str) -> list[PaymentMethod]:
        rows = await self._pool.fetch(
            f"SELECT {_METHOD} FROM payment_methods WHERE rider_id = $1 "
            "ORDER BY is_default DESC, created_at DESC, method_id",
            rider_id,
        )
        return [_method(row) for row in rows]

    async def default_method(self, rider_id: str) -> PaymentMethod | None:
        row = await self._pool.fetchrow(
            f"SELECT {_METHOD} FROM payment_methods WHERE rider_id = $1 AND is_default",
            rider_id,
        )
        return None if row is None else _method(row)

    async def remove_method(self, conn: asyncpg.Connection, rider_id: str, method_id: str) -> None:
        """Delete the card; the newest other one becomes the default if it was."""
        was_default = await conn.fetchval(
            "DELETE FROM payment_methods WHERE rider_id = $1 AND method_id = $2 "
            "RETURNING is_default",
            rider_id,
            method_id,
        )
        if was_default is None:
            raise PaymentMethodNotFoundError(f"no payment method {method_id!r}")
        if was_default:
            await conn.execute(
                "UPDATE payment_methods SET is_default = true WHERE method_id = ("
                "SELECT method_id FROM payment_methods WHERE rider_id = $1 "
                "ORDER BY created_at DESC, method_id LIMIT 1)",
                rider_id,
            )

    async def set_default(
        self, conn: asyncpg.Connection, rider_id: str, method_id: str
    ) -> PaymentMethod:
        exists = await conn.fetchval(
            "SELECT true FROM payment_methods WHERE rider_id = $1 AND method_id = $2 FOR UPDATE",
            rider_id,
            method_id,
        )
        if not exists:
            raise PaymentMethodNotFoundError(f"no payment method {method_id!r}")
        await conn.execute(
            "UPDATE payment_methods SET is_default = false WHERE rider_id = $1 AND is_default",
            rider_id,
        )
        row = await conn.fetchrow(
            "UPDATE payment_methods SET is_default = true "
            f"WHERE method_id = $1 RETURNING {_METHOD}",
            method_id,
        )
        return _method(row)

    # -- charges -----------------------------------------------------------------------------

    async def create_payment(
        self,
        conn: asyncpg.Connection,
        *,
        trip_id: str,
        rider_id: str,
        kind: PaymentKind,
        amount_minor: int,
        currency: str,
    ) -> bool:
        """Record a PENDING charge, due now; False when (trip, kind) has one already."""
        inserted = await conn.fetchval(
            "INSERT INTO payments (id, trip_id, rider_id, kind, status, amount_minor, currency) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT ON CONSTRAINT payments_one_per_trip_kind DO NOTHING RETURNING true",
            str(uuid.uuid4()),
            trip_id,
            rider_id,
            int(kind),
            int(PaymentStatus.PENDING),
            amount_minor,
            currency,
        )
        return inserted is not None

    async def claim_due(self, *, limit: int, lease: timedelta) -> list[Payment]:
        """Claim up to ``limit`` charges that are due: PENDING ones whose wait is over and
        CHARGING ones whose lease ran out (their charger died). Each is CHARGING under a fresh
        lease when this returns, committed, so no other worker takes it meanwhile; returned
        as they were before the claim (the status says which of the two it was)."""
        rows = await self._pool.fetch(
            "WITH due AS ("
            f" SELECT {_PAYMENT} FROM payments WHERE status IN ($1, $2) AND due_at <= now()"
            " ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
            " UPDATE payments p SET status = $2, due_at = now() + $4,"
            "  version = p.version + 1, updated_at = now()"
            " FROM due WHERE p.id = due.id"
            f" RETURNING {', '.join('due.' + c.strip() for c in _PAYMENT.split(','))}",
            int(PaymentStatus.PENDING),
            int(PaymentStatus.CHARGING),
            limit,
            lease,
        )
        return [_payment(row) for row in rows]

    async def start_attempt(self, payment_id: str, *, version: int) -> int:
        """Count a new attempt of a claimed charge (committed before the provider call, so
        the attempt number in its metadata is never reused); returns it."""
        value = await self._pool.fetchval(
            "UPDATE payments SET attempts = attempts + 1, version = version + 1 "
            "WHERE id = $1 AND version = $2 RETURNING attempts",
            payment_id,
            version,
        )
        if value is None:
            raise PaymentNotFoundError(f"payment {payment_id} changed under its claim")
        return int(value)

    async def finish(
        self,
        conn: asyncpg.Connection,
        payment_id: str,
        *,
        status: PaymentStatus,
        card_last4: str,
        failure: str,
        provider_ref: str,
        failures: int,
        due_in: timedelta,
    ) -> Payment:
        row = await conn.fetchrow(
            "UPDATE payments SET status = $2, card_last4 = $3, failure = $4, "
            "provider_ref = CASE WHEN $5 = '' THEN provider_ref ELSE $5 END, failures = $6, "
            "due_at = now() + $7, version = version + 1, updated_at = now() "
            f"WHERE id = $1 AND status = $8 RETURNING {_PAYMENT}",
            payment_id,
            int(status),
            card_last4,
            failure,
            provider_ref,
            failures,
            due_in,
            int(PaymentStatus.CHARGING),
        )
        if row is None:
            raise PaymentNotFoundError(f"payment {payment_id} is no longer charging")
        return _payment(row)

    async def settle_outstanding(self, conn: asyncpg.Connection, rider_id: str) -> int:
        """Put the rider's outstanding charges back in line, due now; how many."""
        result = await conn.execute(
            "UPDATE payments SET status = $2, failures = 0, due_at = now(), "
            "version = version + 1, updated_at = now() WHERE rider_id = $1 AND status = $3",
            rider_id,
            int(PaymentStatus.PENDING),
            int(PaymentStatus.OUTSTANDING),
        )
        return int(result.split()[-1])

    async def outstanding_minor(self, rider_id: str) -> tuple[int, str]:
        row = await self._pool.fetchrow(
            "SELECT COALESCE(sum(amount_minor), 0) AS total, min(currency) AS currency "
            "FROM payments WHERE rider_id = $1 AND status = $2",
            rider_id,
            int(PaymentStatus.OUTSTANDING),
        )
        return int(row["total"]), str(row["currency"] or "")

    async def takings(self) -> list[dict[str, Any]]:
        """Per currency: succeeded charges, their sum and refunds, outstanding ones."""
        rows = await self._pool.fetch(
            "SELECT currency,"
            " count(*) FILTER (WHERE status = $1) AS charges,"
            " coalesce(sum(amount_minor) FILTER (WHERE status = $1), 0) AS charged,"
            " coalesce(sum(refunded_minor) FILTER (WHERE status = $1), 0) AS refunded,"
            " count(*) FILTER (WHERE status = $2) AS outstanding_charges,"
            " coalesce(sum(amount_minor) FILTER (WHERE status = $2), 0) AS outstanding"
            " FROM payments GROUP BY currency ORDER BY currency",
            int(PaymentStatus.SUCCEEDED),
            int(PaymentStatus.OUTSTANDING),
        )
        # sum() of bigint is numeric in PostgreSQL: back to int (minor units are whole).
        return [{k: (v if k == "currency" else int(v)) for k, v in row.items()} for row in rows]

    async def get(self, payment_id: str, conn: asyncpg.Connection | None = None) -> Payment:
        row = await (conn or self._pool).fetchrow(
            f"SELECT {_PAYMENT} FROM payments WHERE id = $1"
            + (" FOR UPDATE" if conn is not None else ""),
            payment_id,
        )
        if row is None:
            raise PaymentNotFoundError(f"no payment {payment_id!r}")
        return _payment(row)

    async def of_trip(self, rider_id: str, trip_id: str) -> list[Payment]:
        """The trip's charges (fare, fee) with their refunds."""
        rows = await self._pool.fetch(
            f"SELECT {_PAYMENT} FROM payments WHERE rider_id = $1 AND trip_id = $2 ORDER BY kind",
            rider_id,
            trip_id,
        )
        return await self._with_refunds(rows)

    async def with_refunds(self, payment_id: str) -> Payment:
        """The charge with its refunds; PaymentNotFoundError if there is none."""
        rows = await self._pool.fetch(f"SELECT {_PAYMENT} FROM payments WHERE id = $1", payment_id)
        if not rows:
            raise PaymentNotFoundError(f"no payment {payment_id!r}")
        return (await self._with_refunds(rows))[0]

    async def _with_refunds(self, rows: list[Any]) -> list[Payment]:
        refunds = await self._pool.fetch(
            "SELECT id, payment_id, amount_minor, reason, pending, created_at FROM payment_refunds "
            "WHERE payment_id = ANY($1::text[]) ORDER BY created_at",
            [row["id"] for row in rows],
        )
        by_payment: dict[str, list[Refund]] = {}
        for r in refunds:
            by_payment.setdefault(r["payment_id"], []).append(
                Refund(r["id"], r["amount_minor"], r["reason"], r["created_at"], r["pending"])
            )
        return [_payment(row, tuple(by_payment.get(row["id"], ()))) for row in rows]

    async def reserve_refund(
        self,
        conn: asyncpg.Connection,
        payment_id: str,
        *,
        refund_id: str,
        amount_minor: int,
        reason: str,
        lease: timedelta,
    ) -> Payment:
        """Record a pending refund and count it in the payment's refunded amount (the
        caller holds the payment's row lock and checked the amount)."""
        await conn.execute(
            "INSERT INTO payment_refunds (id, payment_id, amount_minor, reason, due_at) "
            "VALUES ($1, $2, $3, $4, now() + $5)",
            refund_id,
            payment_id,
            amount_minor,
            reason,
            lease,
        )
        row = await conn.fetchrow(
            "UPDATE payments SET refunded_minor = refunded_minor + $2, version = version + 1, "
            f"updated_at = now() WHERE id = $1 RETURNING {_PAYMENT}",
            payment_id,
            amount_minor,
        )
        return _payment(row)

    async def complete_refund(
        self, conn: asyncpg.Connection, refund_id: str, *, provider_ref: str
    ) -> Payment | None:
        """Mark a pending refund done; the payment after it, or None when it was not pending
        (another worker completed it)."""
        payment_id = await conn.fetchval(
            "UPDATE payment_refunds SET pending = false, provider_ref = $2 "
            "WHERE id = $1 AND pending RETURNING payment_id",
            refund_id,
            provider_ref,
        )
        if payment_id is None:
            return None
        row = await conn.fetchrow(
            "UPDATE payments SET version = version + 1, updated_at = now() "
            f"WHERE id = $1 RETURNING {_PAYMENT}",
            payment_id,
        )
        return _payment(row)

    async def cancel_refund(self, refund_id: str) -> None:
        """Take back a pending refund the provider refused, and its amount."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM payment_refunds WHERE id = $1 AND pending "
                "RETURNING payment_id, amount_minor",
                refund_id,
            )
            if row is not None:
                await conn.execute(
                    "UPDATE payments SET refunded_minor = refunded_minor - $2, "
                    "version = version + 1, updated_at = now() WHERE id = $1",
                    row["payment_id"],
                    row["amount_minor"],
                )

    async def claim_stale_refunds(self, *, limit: int, lease: timedelta) -> list[Any]:
        """Pending refunds whose asker died (past ``due_at``), leased anew: (refund id,
        amount, the payment's provider charge)."""
        return list(
            await self._pool.fetch(
                "WITH due AS (SELECT id FROM payment_refunds WHERE pending AND due_at <= now()"
                " ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " UPDATE payment_refunds r SET due_at = now() + $2 FROM due, payments p"
                " WHERE r.id = due.id AND p.id = r.payment_id"
                " RETURNING r.id, r.amount_minor, p.provider_ref",
                limit,
                lease,
            )
        )


def _method(row: Any) -> PaymentMethod:
    return PaymentMethod(
        card=CardDetails(
            method_id=row["method_id"],
            brand=row["brand"],
            last4=row["last4"],
            exp_month=row["exp_month"],
            exp_year=row["exp_year"],
        ),
        is_default=row["is_default"],
        created_at=row["created_at"],
    )


def _payment(row: Any, refunds: tuple[Refund, ...] = ()) -> Payment:
    return Payment(
        id=row["id"],
        trip_id=row["trip_id"],
        rider_id=row["rider_id"],
        kind=PaymentKind(row["kind"]),
        status=PaymentStatus(row["status"]),
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        attempts=row["attempts"],
        failures=row["failures"],
        card_last4=row["card_last4"],
        failure=row["failure"],
        provider_ref=row["provider_ref"],
        refunded_minor=row["refunded_minor"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        refunds=refunds,
    )
