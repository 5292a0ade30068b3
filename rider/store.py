"""The rider service's Postgres schema: accounts, ratings and the trip-history read model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from protos import events
from rider.domain import (
    NewRider,
    PhoneTakenError,
    Rider,
    RiderChanges,
    RiderNotFoundError,
    TripPage,
    TripSummary,
    TripUpdate,
)
from rider.events import rider_created, rider_updated
from rideshare.bus import claim_event
from rideshare.outbox import add_event

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
    """Queries and transactions of the rider schema; rows in, domain objects out."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, rider: NewRider, *, password_hash: str) -> Rider:
        """Insert the rider and queue rider.created; PhoneTakenError if the phone is taken."""
        async with self._pool.acquire() as conn, conn.transaction():
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
            created = _rider(row)
            await add_event(
                conn,
                subject=events.RIDER_CREATED,
                aggregate_id=created.id,
                aggregate_version=created.version,
                payload=rider_created(created),
            )
        return created

    async def get(self, rider_id: str) -> Rider:
        """The rider; RiderNotFoundError if there is none with this id."""
        row = await self._pool.fetchrow(
            f"SELECT {_RIDER_COLUMNS} FROM riders WHERE id = $1", rider_id
        )
        if row is None:
            raise RiderNotFoundError(f"no rider {rider_id!r}")
        return _rider(row)

    async def update(self, rider_id: str, changes: RiderChanges) -> Rider:
        """Apply ``changes`` and queue rider.updated, unless they change nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_RIDER_COLUMNS} FROM riders WHERE id = $1 FOR UPDATE", rider_id
            )
            if row is None:
                raise RiderNotFoundError(f"no rider {rider_id!r}")
            rider = _rider(row)
            if not changes.changes(rider):
                return rider
            row = await conn.fetchrow(
                "UPDATE riders SET name = COALESCE($2, name), email = COALESCE($3, email), "
                "version = version + 1, updated_at = now() "
                f"WHERE id = $1 RETURNING {_RIDER_COLUMNS}",
                rider_id,
                changes.name,
                changes.email,
            )
            updated = _rider(row)
            await add_event(
                conn,
                subject=events.RIDER_UPDATED,
                aggregate_id=updated.id,
                aggregate_version=updated.version,
                payload=rider_updated(updated),
            )
        return updated

    async def password_hash(self, phone: str) -> tuple[str, str] | None:
        """(rider id, password hash) of the rider with this phone, or None."""
        row = await self._pool.fetchrow(
            "SELECT id, password_hash FROM riders WHERE phone = $1", phone
        )
        return None if row is None else (row["id"], row["password_hash"])

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

    async def apply_trip(self, update: TripUpdate, *, consumer: str, event_id: str) -> bool:
        """Fold one trip event into the read model, once per event id; False if seen before."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
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
        return True

    async def apply_rating(
        self,
        *,
        trip_id: str,
        rider_id: str,
        stars: int,
        rated_at: datetime,
        consumer: str,
        event_id: str,
    ) -> bool:
        """Count a driver's rating of a rider once per event and once per trip."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            first = await conn.fetchval(
                "INSERT INTO rider_ratings (trip_id, rider_id, stars, rated_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                trip_id,
                rider_id,
                stars,
                rated_at,
            )
            if first:
                await conn.execute(
                    "UPDATE riders SET rating_sum = rating_sum + $2, "
                    "rating_count = rating_count + 1 WHERE id = $1",
                    rider_id,
                    stars,
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
