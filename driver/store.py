"""The driver service's Postgres schema: drivers, vehicles, trip holds and ratings."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from driver.domain import (
    Driver,
    DriverNotFoundError,
    DriverRating,
    NewDriver,
    NewVehicle,
    OnlineDriver,
    OnlinePage,
    PhoneTakenError,
    PlateTakenError,
    TripHold,
    Vehicle,
    VehicleClass,
)

__all__ = ["DriverStore"]

_DRIVER_COLUMNS = (
    "id, name, phone, license_number, online, active_vehicle_id, current_trip_id, rating_sum, "
    "rating_count, version, created_at"
)
_VEHICLE_COLUMNS = "id, driver_id, make, model, plate, seats, vehicle_class, created_at"


class DriverStore:
    """Queries of the driver schema; rows in, domain objects out. Methods taking ``conn`` run
    in the caller's transaction (``transaction()``); the others are plain reads on the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction, committed when the block exits cleanly."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # -- drivers and vehicles --------------------------------------------------------------

    async def insert(
        self, conn: asyncpg.Connection, driver: NewDriver, *, password_hash: str
    ) -> Driver:
        """Insert a new driver; PhoneTakenError if the phone is taken."""
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
        return _driver(row, ())

    async def get(self, driver_id: str) -> Driver:
        """The driver with their vehicles; DriverNotFoundError if there is none."""
        async with self._pool.acquire() as conn:
            return await self.load(conn, driver_id)

    async def load(self, conn: asyncpg.Connection, driver_id: str, *, lock: bool = False) -> Driver:
        """The driver with their vehicles, the driver row locked until the transaction ends
        when ``lock``; DriverNotFoundError if there is none."""
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

    async def next_version(self, conn: asyncpg.Connection, driver_id: str) -> int:
        """Move the driver to their next version and return it; DriverNotFoundError if none."""
        version: int | None = await conn.fetchval(
            "UPDATE drivers SET version = version + 1, updated_at = now() "
            "WHERE id = $1 RETURNING version",
            driver_id,
        )
        if version is None:
            raise DriverNotFoundError(f"no driver {driver_id!r}")
        return version

    async def insert_vehicle(
        self, conn: asyncpg.Connection, driver_id: str, vehicle: NewVehicle
    ) -> Vehicle:
        """Register a vehicle of the driver; PlateTakenError for a known plate."""
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
        return _vehicle(row)

    async def password_hash(self, phone: str) -> tuple[str, str] | None:
        """(driver id, password hash) of the driver with this phone, or None."""
        row = await self._pool.fetchrow(
            "SELECT id, password_hash FROM drivers WHERE phone = $1", phone
        )
        return None if row is None else (row["id"], row["password_hash"])

    # -- online status ---------------------------------------------------------------------

    async def set_online(self, conn: asyncpg.Connection, driver_id: str, vehicle_id: str) -> None:
        """The driver is online with the vehicle, as their next version."""
        await conn.execute(
            "UPDATE drivers SET online = true, active_vehicle_id = $2, "
            "version = version + 1, updated_at = now() WHERE id = $1",
            driver_id,
            vehicle_id,
        )

    async def set_offline(self, conn: asyncpg.Connection, driver_id: str) -> None:
        """The driver is offline, as their next version."""
        await conn.execute(
            "UPDATE drivers SET online = false, active_vehicle_id = NULL, "
            "version = version + 1, updated_at = now() WHERE id = $1",
            driver_id,
        )

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

    # -- trip holds and ratings ------------------------------------------------------------

    async def lock_if_exists(self, conn: asyncpg.Connection, driver_id: str) -> bool:
        """Lock the driver row until the transaction ends; False when there is no such driver."""
        exists = await conn.fetchval("SELECT true FROM drivers WHERE id = $1 FOR UPDATE", driver_id)
        return bool(exists)

    async def record_hold(self, conn: asyncpg.Connection, hold: TripHold) -> bool:
        """Record the hold if newer than what is known about that (driver, trip); then the
        driver's current trip is their newest live one, as their next version. False when
        the hold is not newer and nothing changed."""
        applied = await conn.fetchval(
            "INSERT INTO driver_trips AS h (driver_id, trip_id, version, live) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (driver_id, trip_id) DO UPDATE "
            "SET version = EXCLUDED.version, live = EXCLUDED.live "
            "WHERE h.version < EXCLUDED.version RETURNING true",
            hold.driver_id,
            hold.trip_id,
            hold.trip_version,
            hold.live,
        )
        if not applied:
            return False
        await conn.execute(
            "UPDATE drivers SET current_trip_id = (SELECT trip_id FROM driver_trips "
            "WHERE driver_id = $1 AND live ORDER BY version DESC LIMIT 1), "
            "version = version + 1, updated_at = now() WHERE id = $1",
            hold.driver_id,
        )
        return True

    async def add_rating(self, conn: asyncpg.Connection, rating: DriverRating) -> bool:
        """Count the rating into the driver's average, once per trip; False if the trip's
        rating was counted already."""
        first = await conn.fetchval(
            "INSERT INTO driver_ratings (trip_id, driver_id, stars, rated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
            rating.trip_id,
            rating.driver_id,
            rating.stars,
            rating.rated_at,
        )
        if first:
            await conn.execute(
                "UPDATE drivers SET rating_sum = rating_sum + $2, "
                "rating_count = rating_count + 1 WHERE id = $1",
                rating.driver_id,
                rating.stars,
            )
        return bool(first)


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
