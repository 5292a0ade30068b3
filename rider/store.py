"""The rider service's Postgres schema: accounts, ratings and the trip-history read model."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from rider.domain import (
    NewRider,
    PhoneTakenError,
    Rider,
    RiderChanges,
    RiderNotFoundError,
    RiderRating,
    TripPage,
    TripSummary,
    TripUpdate,
)

__all__ = ["RiderStore"]

_RIDER_COLUMNS = "id, name, phone, email, rating_sum, rating_count, version, created_at, updated_at"
_TRIP_COLUMNS = (
    "trip_id, state, driver_id, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, fare_minor, "
    "fare_currency, vehicle_class, requested_at, completed_at, ended_at, sort_at"
)

# Newest version wins for what changes along a trip; facts that never change fill gaps from
# any event, so out-of-order delivery still builds the whole row (see domain.TripUpdate).
_UPSERT_TRIP = """
INSERT INTO trips AS t (trip_id, rider_id, version, state, driver_id, pickup_lat, pickup_lng,
    dropoff_lat, dropoff_lng, fare_minor, fare_currency, vehicle_class, requested_at,
    completed_at, ended_at, first_seen_at)
VALUES ($1, $2, $3, $4, COALESCE($5, ''), $6, $7, $8, $9, $10, $11, COALESCE($12, 0), $13, $14,
    $15, $16)
ON CONFLICT (trip_id) DO UPDATE SET
    version = GREATEST(t.version, EXCLUDED.version),
    state = CASE WHEN EXCLUDED.version > t.version THEN EXCLUDED.state ELSE t.state END,
    driver_id = CASE WHEN EXCLUDED.version > t.version AND $5::text IS NOT NULL
        THEN EXCLUDED.driver_id ELSE t.driver_id END,
    fare_minor = CASE WHEN EXCLUDED.version > t.version AND $10::bigint IS NOT NULL
        THEN EXCLUDED.fare_minor ELSE COALESCE(t.fare_minor, EXCLUDED.fare_minor) END,
    fare_currency = CASE WHEN EXCLUDED.version > t.version AND $11::text IS NOT NULL
        THEN EXCLUDED.fare_currency ELSE COALESCE(t.fare_currency, EXCLUDED.fare_currency) END,
    pickup_lat = COALESCE(t.pickup_lat, EXCLUDED.pickup_lat),
    pickup_lng = COALESCE(t.pickup_lng, EXCLUDED.pickup_lng),
    dropoff_lat = COALESCE(t.dropoff_lat, EXCLUDED.dropoff_lat),
    dropoff_lng = COALESCE(t.dropoff_lng, EXCLUDED.dropoff_lng),
    vehicle_class = CASE WHEN t.vehicle_class = 0 THEN EXCLUDED.vehicle_class
        ELSE t.vehicle_class END,
    requested_at = COALESCE(t.requested_at, EXCLUDED.requested_at),
    completed_at = COALESCE(t.completed_at, EXCLUDED.completed_at),
    ended_at = COALESCE(t.ended_at, EXCLUDED.ended_at)
"""


class RiderStore:
    """Queries of the rider schema; rows in, domain objects out. Methods taking ``conn`` run in
    the caller's transaction (``transaction()``); the others are plain reads on the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction, committed when the block exits cleanly."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # -- accounts --------------------------------------------------------------------------

    async def insert(
        self, conn: asyncpg.Connection, rider: NewRider, *, password_hash: str
    ) -> Rider:
        """Insert a new rider; PhoneTakenError if the phone is taken."""
        try:
            row = await conn.fetchrow(
                "INSERT INTO riders (id, name, phone, email, password_hash) "
                f"VALUES ($1, $2, $3, $4, $5) RETURNING {_RIDER_COLUMNS}",
                str(uuid.uuid4()),
                rider.name,
                rider.phone,
                rider.email,
                password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "riders_phone_key":
                raise PhoneTakenError("a rider with this phone number exists") from None
            raise
        return _rider(row)

    async def get(self, rider_id: str) -> Rider:
        """The rider; RiderNotFoundError if there is none with this id."""
        row = await self._pool.fetchrow(
            f"SELECT {_RIDER_COLUMNS} FROM riders WHERE id = $1", rider_id
        )
        if row is None:
            raise RiderNotFoundError(f"no rider {rider_id!r}")
        return _rider(row)

    async def lock(self, conn: asyncpg.Connection, rider_id: str) -> Rider:
        """The rider, row locked until the transaction ends; RiderNotFoundError if none."""
        row = await conn.fetchrow(
            f"SELECT {_RIDER_COLUMNS} FROM riders WHERE id = $1 FOR UPDATE", rider_id
        )
        if row is None:
            raise RiderNotFoundError(f"no rider {rider_id!r}")
        return _rider(row)

    async def update(self, conn: asyncpg.Connection, rider_id: str, changes: RiderChanges) -> Rider:
        """Apply ``changes`` (None fields stay) as the rider's next version."""
        row = await conn.fetchrow(
            "UPDATE riders SET name = COALESCE($2, name), email = COALESCE($3, email), "
            "version = version + 1, updated_at = now() "
            f"WHERE id = $1 RETURNING {_RIDER_COLUMNS}",
            rider_id,
            changes.name,
            changes.email,
        )
        return _rider(row)

    async def password_hash(self, phone: str) -> tuple[str, str] | None:
        """(rider id, password hash) of the rider with this phone, or None."""
        row = await self._pool.fetchrow(
            "SELECT id, password_hash FROM riders WHERE phone = $1", phone
        )
        return None if row is None else (row["id"], row["password_hash"])

    # -- trip history and ratings ----------------------------------------------------------

    async def list_trips(self, rider_id: str, page: TripPage) -> list[TripSummary]:
        """Up to ``page.limit + 1`` trips of the rider, newest first, after the page's start
        (one more than asked, to know whether another page follows)."""
        after_at, after_id = page.after if page.after is not None else (None, None)
        rows = await self._pool.fetch(
            f"SELECT {_TRIP_COLUMNS} FROM trips WHERE rider_id = $1 "
            "AND ($2::timestamptz IS NULL OR (sort_at, trip_id) < ($2, $3::text)) "
            "ORDER BY sort_at DESC, trip_id DESC LIMIT $4",
            rider_id,
            after_at,
            after_id,
            page.limit + 1,
        )
        return [_trip(row) for row in rows]

    async def upsert_trip(self, conn: asyncpg.Connection, update: TripUpdate) -> None:
        """Fold one trip event's facts into the trip's history row."""
        await conn.execute(
            _UPSERT_TRIP,
            update.trip_id,
            update.rider_id,
            update.version,
            update.state,
            update.driver_id,
            *(update.pickup or (None, None)),
            *(update.dropoff or (None, None)),
            update.fare_minor,
            update.fare_currency,
            update.vehicle_class,
            update.requested_at,
            update.completed_at,
            update.ended_at,
            update.occurred_at,
        )

    async def add_rating(self, conn: asyncpg.Connection, rating: RiderRating) -> bool:
        """Count the rating into the rider's average, once per trip; False if the trip's
        rating was counted already."""
        first = await conn.fetchval(
            "INSERT INTO rider_ratings (trip_id, rider_id, stars, rated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
            rating.trip_id,
            rating.rider_id,
            rating.stars,
            rating.rated_at,
        )
        if first:
            await conn.execute(
                "UPDATE riders SET rating_sum = rating_sum + $2, "
                "rating_count = rating_count + 1 WHERE id = $1",
                rating.rider_id,
                rating.stars,
            )
        return bool(first)


def _rider(row: Any) -> Rider:
    count = row["rating_count"]
    return Rider(
        id=row["id"],
        name=row["name"],
        phone=row["phone"],
        email=row["email"],
        rating_avg=row["rating_sum"] / count if count else 0.0,
        rating_count=count,
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _point(lat: float | None, lng: float | None) -> tuple[float, float] | None:
    return None if lat is None or lng is None else (lat, lng)


def _trip(row: Any) -> TripSummary:
    return TripSummary(
        trip_id=row["trip_id"],
        state=row["state"],
        pickup=_point(row["pickup_lat"], row["pickup_lng"]),
        dropoff=_point(row["dropoff_lat"], row["dropoff_lng"]),
        fare=(
            None if row["fare_minor"] is None else (row["fare_minor"], row["fare_currency"] or "")
        ),
        driver_id=row["driver_id"],
        vehicle_class=row["vehicle_class"],
        requested_at=row["requested_at"],
        completed_at=row["completed_at"],
        ended_at=row["ended_at"],
        sort_at=row["sort_at"],
    )
