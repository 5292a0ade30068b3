"""The driver service's Postgres schema: drivers, vehicles, trip holds and ratings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from driver.domain import (
    Driver,
    DriverNotFoundError,
    NewDriver,
    NewVehicle,
    OnlineDriver,
    OnlinePage,
    PhoneTakenError,
    PlateTakenError,
    Vehicle,
    VehicleClass,
)
from driver.events import driver_created, driver_offline, driver_online, vehicle_added
from protos import events
from rideshare.bus import claim_event
from rideshare.outbox import add_event

__all__ = ["DriverStore"]

_DRIVER_COLUMNS = (
    "id, name, phone, license_number, online, active_vehicle_id, current_trip_id, rating_sum, "
    "rating_count, version, created_at"
)
_VEHICLE_COLUMNS = "id, driver_id, make, model, plate, seats, vehicle_class, created_at"


class DriverStore:
    """Queries and transactions of the driver schema; rows in, domain objects out."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, driver: NewDriver, *, password_hash: str) -> Driver:
        """Insert the driver and queue driver.created; PhoneTakenError if the phone is taken."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "INSERT INTO drivers (id, name, phone, license_number, password_hash) "
                    f"VALUES ($1, $2, $3, $4, $5) RETURNING {_DRIVER_COLUMNS}",
                    str(uuid.uuid4()),
                    driver.name,
                    driver.phone,
                    driver.license_number,
                    password_hash,
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "drivers_phone_key":
                    raise PhoneTakenError("a driver with this phone number exists") from None
                raise
            created = _driver(row, ())
            await add_event(
                conn,
                subject=events.DRIVER_CREATED,
                aggregate_id=created.id,
                aggregate_version=created.version,
                payload=driver_created(created),
            )
        return created

    async def get(self, driver_id: str) -> Driver:
        """The driver with their vehicles; DriverNotFoundError if there is none."""
        async with self._pool.acquire() as conn:
            return await self._load(conn, driver_id, lock=False)

    async def add_vehicle(self, driver_id: str, vehicle: NewVehicle) -> Vehicle:
        """Register a vehicle and queue driver.vehicle_added; PlateTakenError for a known plate."""
        async with self._pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                "UPDATE drivers SET version = version + 1, updated_at = now() "
                "WHERE id = $1 RETURNING version",
                driver_id,
            )
            if version is None:
                raise DriverNotFoundError(f"no driver {driver_id!r}")
            try:
                row = await conn.fetchrow(
                    "INSERT INTO vehicles (id, driver_id, make, model, plate, seats, "
                    f"vehicle_class) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    f"RETURNING {_VEHICLE_COLUMNS}",
                    str(uuid.uuid4()),
                    driver_id,
                    vehicle.make,
                    vehicle.model,
                    vehicle.plate,
                    vehicle.seats,
                    int(vehicle.vehicle_class),
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "vehicles_plate_key":
                    raise PlateTakenError(f"plate {vehicle.plate} is registered already") from None
                raise
            added = _vehicle(row)
            await add_event(
                conn,
                subject=events.DRIVER_VEHICLE_ADDED,
                aggregate_id=driver_id,
                aggregate_version=version,
                payload=vehicle_added(added),
            )
        return added

    async def password_hash(self, phone: str) -> tuple[str, str] | None:
        """(driver id, password hash) of the driver with this phone, or None."""
        row = await self._pool.fetchrow(
            "SELECT id, password_hash FROM drivers WHERE phone = $1", phone
        )
        return None if row is None else (row["id"], row["password_hash"])

    async def go_online(self, driver_id: str, vehicle_id: str) -> Driver:
        """Put the driver online with the vehicle and queue driver.online, unless already so.

        The driver row is locked first, so a trip event or a GoOffline racing this waits.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            driver = await self._load(conn, driver_id, lock=True)
            vehicle = driver.vehicle_to_go_online(vehicle_id)
            if vehicle is None:
                return driver
            await conn.execute(
                "UPDATE drivers SET online = true, active_vehicle_id = $2, "
                "version = version + 1, updated_at = now() WHERE id = $1",
                driver_id,
                vehicle.id,
            )
            driver = await self._load(conn, driver_id, lock=False)
            await add_event(
                conn,
                subject=events.DRIVER_ONLINE,
                aggregate_id=driver_id,
                aggregate_version=driver.version,
                payload=driver_online(driver, vehicle),
            )
        return driver

    async def go_offline(self, driver_id: str) -> Driver:
        """Take the driver offline and queue driver.offline, unless already offline."""
        async with self._pool.acquire() as conn, conn.transaction():
            driver = await self._load(conn, driver_id, lock=True)
            if not driver.must_go_offline():
                return driver
            await conn.execute(
                "UPDATE drivers SET online = false, active_vehicle_id = NULL, "
                "version = version + 1, updated_at = now() WHERE id = $1",
                driver_id,
            )
            driver = await self._load(conn, driver_id, lock=False)
            await add_event(
                conn,
                subject=events.DRIVER_OFFLINE,
                aggregate_id=driver_id,
                aggregate_version=driver.version,
                payload=driver_offline(driver_id),
            )
        return driver

    async def online_drivers(self, page: OnlinePage) -> list[OnlineDriver]:
        """Up to ``page.limit + 1`` online drivers with their vehicle's class, by id, after
        the page's start (one more than asked, to know whether another page follows)."""
        rows = await self._pool.fetch(
            "SELECT d.id, v.vehicle_class FROM drivers d "
            "JOIN vehicles v ON v.id = d.active_vehicle_id "
            "WHERE d.online AND ($1::text IS NULL OR d.id > $1) ORDER BY d.id LIMIT $2",
            page.after,
            page.limit + 1,
        )
        return [OnlineDriver(row["id"], VehicleClass(row["vehicle_class"])) for row in rows]

    async def apply_trip_hold(
        self,
        *,
        driver_id: str,
        trip_id: str,
        trip_version: int,
        live: bool,
        consumer: str,
        event_id: str,
    ) -> bool:
        """Record that a trip holds (``live``) or released the driver, once per event and only
        if newer than what is known about that (driver, trip); then the driver's current trip
        is their newest live one. False when the event changed nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            # Lock the driver before the hold rows, in the same order as GoOnline/GoOffline.
            exists = await conn.fetchval(
                "SELECT true FROM drivers WHERE id = $1 FOR UPDATE", driver_id
            )
            if not exists:
                return False  # a driver of another deployment (or test): not ours
            applied = await conn.fetchval(
                "INSERT INTO driver_trips AS h (driver_id, trip_id, version, live) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (driver_id, trip_id) DO UPDATE "
                "SET version = EXCLUDED.version, live = EXCLUDED.live "
                "WHERE h.version < EXCLUDED.version RETURNING true",
                driver_id,
                trip_id,
                trip_version,
                live,
            )
            if not applied:
                return False
            await conn.execute(
                "UPDATE drivers SET current_trip_id = (SELECT trip_id FROM driver_trips "
                "WHERE driver_id = $1 AND live ORDER BY version DESC LIMIT 1), "
                "version = version + 1, updated_at = now() WHERE id = $1",
                driver_id,
            )
        return True

    async def apply_rating(
        self,
        *,
        trip_id: str,
        driver_id: str,
        stars: int,
        rated_at: datetime,
        consumer: str,
        event_id: str,
    ) -> bool:
        """Count a rider's rating of a driver once per event and once per trip."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            first = await conn.fetchval(
                "INSERT INTO driver_ratings (trip_id, driver_id, stars, rated_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                trip_id,
                driver_id,
                stars,
                rated_at,
            )
            if first:
                await conn.execute(
                    "UPDATE drivers SET rating_sum = rating_sum + $2, "
                    "rating_count = rating_count + 1 WHERE id = $1",
                    driver_id,
                    stars,
                )
        return bool(first)

    async def _load(self, conn: asyncpg.Connection, driver_id: str, *, lock: bool) -> Driver:
        row = await conn.fetchrow(
            f"SELECT {_DRIVER_COLUMNS} FROM drivers WHERE id = $1"
            + (" FOR UPDATE" if lock else ""),
            driver_id,
        )
        if row is None:
            raise DriverNotFoundError(f"no driver {driver_id!r}")
        vehicles = await conn.fetch(
            f"SELECT {_VEHICLE_COLUMNS} FROM vehicles WHERE driver_id = $1 ORDER BY created_at, id",
            driver_id,
        )
        return _driver(row, tuple(_vehicle(v) for v in vehicles))


def _vehicle(row: Any) -> Vehicle:
    return Vehicle(
        id=row["id"],
        driver_id=row["driver_id"],
        make=row["make"],
        model=row["model"],
        plate=row["plate"],
        seats=row["seats"],
        vehicle_class=VehicleClass(row["vehicle_class"]),
        created_at=row["created_at"],
    )


def _driver(row: Any, vehicles: tuple[Vehicle, ...]) -> Driver:
    count = row["rating_count"]
    return Driver(
        id=row["id"],
        name=row["name"],
        phone=row["phone"],
        license_number=row["license_number"],
        online=row["online"],
        active_vehicle_id=row["active_vehicle_id"] or "",
        current_trip_id=row["current_trip_id"] or "",
        rating_avg=row["rating_sum"] / count if count else 0.0,
        rating_count=count,
        version=row["version"],
        created_at=row["created_at"],
        vehicles=vehicles,
    )
