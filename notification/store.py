"""PostgreSQL adapter of the notification service: notifications, deliveries, read models.

Event handling runs in a :class:`Batch`, one transaction over the events of a fetched batch
(claims, read model updates and notification rows commit or roll back together).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import asyncpg

from notification.domain import (
    Channel,
    Delivery,
    DeliveryOutcome,
    DriverVehicle,
    Notification,
    PageCursor,
    from_us,
)
from rideshare.bus import claim_event

__all__ = ["Batch", "NotificationStore"]

_COLUMNS = "id, user_id, kind, title, body, data, trip_id, channels, event_id, created_at, read_at"


def _notification(row: asyncpg.Record) -> Notification:
    return Notification(
        id=str(row["id"]),
        user_id=row["user_id"],
        kind=row["kind"],
        title=row["title"],
        body=row["body"],
        data=json.loads(row["data"]),
        trip_id=row["trip_id"],
        channels=tuple(Channel.from_label(c) for c in row["channels"]),
        event_id=row["event_id"],
        created_at=row["created_at"],
        read_at=row["read_at"],
    )


class Batch:
    """The transaction in which one batch of events takes effect."""

    def __init__(self, conn: asyncpg.Connection, consumer: str) -> None:
        self._conn = conn
        self._consumer = consumer

    async def claim(self, event_id: str) -> bool:
        """True the first time this consumer sees ``event_id`` (see rideshare.bus.claim_event)."""
        return await claim_event(self._conn, consumer=self._consumer, event_id=event_id)

    async def upsert_user(self, user_id: str, *, name: str, phone: str, version: int) -> None:
        """Record a rider's or driver's name and phone. An older version never overwrites a
        newer name; a phone number is kept when the newer event carries none."""
        await self._conn.execute(
            """
            INSERT INTO users (user_id, name, phone, version) VALUES ($1, $2, $3, $4)
            ON CONFLICT (user_id) DO UPDATE SET
                name = CASE WHEN users.version <= EXCLUDED.version
                            THEN EXCLUDED.name ELSE users.name END,
                phone = CASE WHEN EXCLUDED.phone <> ''
                                  AND (users.version <= EXCLUDED.version OR users.phone = '')
                             THEN EXCLUDED.phone ELSE users.phone END,
                version = GREATEST(users.version, EXCLUDED.version)
            """,
            user_id,
            name,
            phone,
            version,
        )

    async def upsert_driver_vehicle(
        self, vehicle: DriverVehicle, *, vehicle_class: int, version: int
    ) -> None:
        """Record the vehicle a driver went online with, unless a newer one is known."""
        await self._conn.execute(
            """
            INSERT INTO driver_vehicles
                (driver_id, driver_name, make, model, plate, vehicle_class, version)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (driver_id) DO UPDATE SET
                driver_name = EXCLUDED.driver_name, make = EXCLUDED.make,
                model = EXCLUDED.model, plate = EXCLUDED.plate,
                vehicle_class = EXCLUDED.vehicle_class, version = EXCLUDED.version
            WHERE driver_vehicles.version <= EXCLUDED.version
            """,
            vehicle.driver_id,
            vehicle.driver_name,
            vehicle.make,
            vehicle.model,
            vehicle.plate,
            vehicle_class,
            version,
        )

    async def driver_vehicle(self, driver_id: str) -> DriverVehicle | None:
        """The driver's current vehicle, as of this transaction."""
        row = await self._conn.fetchrow(
            "SELECT driver_id, driver_name, make, model, plate FROM driver_vehicles "
            "WHERE driver_id = $1",
            driver_id,
        )
        return None if row is None else DriverVehicle(**dict(row))

    async def insert_notifications(self, notifications: Sequence[Notification]) -> set[str]:
        """Store the notifications and their pending push/SMS deliveries, in one statement.

        Returns the ids actually inserted: a notification whose (event_id, user_id) already
        exists is skipped by the unique constraint, the last guard against a duplicate.
        """
        if not notifications:
            return set()
        rows = await self._conn.fetch(
            """
            WITH inserted AS (
                INSERT INTO notifications
                    (id, user_id, kind, title, body, data, trip_id, channels, event_id,
                     created_at)
                SELECT id, user_id, kind, title, body, data::jsonb, trip_id,
                       string_to_array(channels, ','), event_id, created_at
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                            $6::text[], $7::text[], $8::text[], $9::text[],
                            $10::timestamptz[])
                     AS u(id, user_id, kind, title, body, data, trip_id, channels, event_id,
                          created_at)
                ON CONFLICT (event_id, user_id) DO NOTHING
                RETURNING id, channels
            ), deliveries AS (
                INSERT INTO deliveries (notification_id, channel)
                SELECT inserted.id, channel
                FROM inserted, unnest(inserted.channels) AS channel
                WHERE channel <> 'in_app'
            )
            SELECT id FROM inserted
            """,
            [n.id for n in notifications],
            [n.user_id for n in notifications],
            [n.kind for n in notifications],
            [n.title for n in notifications],
            [n.body for n in notifications],
            [json.dumps(dict(n.data), separators=(",", ":")) for n in notifications],
            [n.trip_id for n in notifications],
            [",".join(c.label for c in n.channels) for n in notifications],
            [n.event_id for n in notifications],
            [n.created_at for n in notifications],
        )
        return {str(row["id"]) for row in rows}


class NotificationStore:
    """Notifications of every user, their push/SMS deliveries and the read models."""

    def __init__(self, pool: asyncpg.Pool, *, consumer: str) -> None:
        self._pool = pool
        self._consumer = consumer

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """A transaction for applying events; commits when the block exits normally."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield Batch(conn, self._consumer)

    async def list_for_user(
        self, user_id: str, *, limit: int, unread_only: bool, after: PageCursor | None
    ) -> list[Notification]:
        """Up to ``limit`` of the user's notifications, newest first, after ``after``."""
        conditions = ["user_id = $1"]
        args: list[object] = [user_id]
        if unread_only:
            conditions.append("read_at IS NULL")
        if after is not None:
            conditions.append("(created_at, id) < ($2, $3::uuid)")
            args += [from_us(after.created_at_us), after.notification_id]
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM notifications WHERE {' AND '.join(conditions)} "
            f"ORDER BY created_at DESC, id DESC LIMIT {int(limit)}",
            *args,
        )
        return [_notification(row) for row in rows]

    async def get(self, notification_id: str) -> Notification | None:
        """One notification by id."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM notifications WHERE id = $1", notification_id
        )
        return None if row is None else _notification(row)

    async def mark_read(self, user_id: str, notification_ids: Sequence[str]) -> int:
        """Mark the user's unread notifications among ``notification_ids`` read; how many
        changed (others' ids, unknown ids and already read ones are left alone)."""
        if not notification_ids:
            return 0
        status = await self._pool.execute(
            "UPDATE notifications SET read_at = now() "
            "WHERE user_id = $1 AND id = ANY($2::uuid[]) AND read_at IS NULL",
            user_id,
            list(notification_ids),
        )
        return int(status.split()[-1])

    async def claim_due_deliveries(self, *, limit: int, lease_s: float) -> list[Delivery]:
        """Take up to ``limit`` pending deliveries whose time has come, counting an attempt.

        The claim pushes ``next_attempt_at`` ``lease_s`` ahead: other copies skip the rows
        (SKIP LOCKED while this transaction runs, the lease after it), and a copy that dies
        mid-send leaves the delivery to be retried when the lease ends.
        """
        rows = await self._pool.fetch(
            """
            WITH due AS (
                SELECT id FROM deliveries
                WHERE status = 'pending' AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deliveries AS d
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
            FROM due, notifications AS n
            WHERE d.id = due.id AND n.id = d.notification_id
            RETURNING d.id, d.attempts, d.channel, n.id AS notification_id, n.user_id,
                      n.kind, n.title, n.body, n.data, n.trip_id,
                      (SELECT u.phone FROM users AS u WHERE u.user_id = n.user_id) AS phone
            """,
            limit,
            lease_s,
        )
        return [
            Delivery(
                id=row["id"],
                attempt=row["attempts"],
                channel=Channel.from_label(row["channel"]),
                notification_id=str(row["notification_id"]),
                user_id=row["user_id"],
                phone=row["phone"] or "",
                kind=row["kind"],
                title=row["title"],
                body=row["body"],
                data=json.loads(row["data"]),
                trip_id=row["trip_id"],
            )
            for row in rows
        ]

    async def record_attempts(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Store attempts and their outcomes, all in one statement: sent when ``error`` is
        None, otherwise pending again in ``retry_in_s`` seconds, or failed for good when
        that is None."""
        if not outcomes:
            return
        await self._pool.execute(
            """
            WITH u AS (
                SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[],
                                     $5::text[], $6::float8[])
                     AS u(delivery_id, attempt, provider, destination, error, retry_in_s)
            ), attempts AS (
                INSERT INTO delivery_attempts
                    (delivery_id, attempt, provider, destination, ok, error)
                SELECT delivery_id, attempt, provider, destination, error IS NULL,
                       coalesce(error, '')
                FROM u
                ON CONFLICT (delivery_id, attempt) DO NOTHING
            )
            UPDATE deliveries AS d SET
                status = CASE WHEN u.error IS NULL THEN 'sent'
                              WHEN u.retry_in_s IS NULL THEN 'failed'
                              ELSE 'pending' END,
                sent_at = CASE WHEN u.error IS NULL THEN now() ELSE d.sent_at END,
                last_error = coalesce(u.error, ''),
                next_attempt_at = CASE WHEN u.retry_in_s IS NULL THEN d.next_attempt_at
                                       ELSE now() + make_interval(secs => u.retry_in_s) END
            FROM u
            WHERE d.id = u.delivery_id
            """,
            [o.delivery.id for o in outcomes],
            [o.delivery.attempt for o in outcomes],
            [o.provider for o in outcomes],
            [o.destination for o in outcomes],
            [o.error for o in outcomes],
            [o.retry_in_s for o in outcomes],
        )
