"""The driver service's use cases: sign-up, vehicles, login, going online/offline, trip.* effects.

A change to a driver and the driver.* event that reports it share one transaction (the event
goes to the outbox, which the relay publishes after the commit). Status changes lock the
driver row first, so a trip event and a GoOnline/GoOffline racing it take turns. An effect of
a consumed event claims the event's id in the same transaction, so a redelivery changes
nothing.
"""

from __future__ import annotations

import asyncpg
from google.protobuf.message import Message

from driver import wire
from driver.domain import (
    BadCredentialsError,
    Driver,
    DriverRating,
    NewDriver,
    NewVehicle,
    TripHold,
    Vehicle,
)
from driver.store import DriverStore
from protos import events
from rideshare.bus import claim_event
from rideshare.credentials import PasswordHasher
from rideshare.outbox import add_event

__all__ = ["DriverCommands"]


class DriverCommands:
    """Every write of the driver service; the KDF runs in the bounded PasswordHasher."""

    def __init__(self, store: DriverStore, hasher: PasswordHasher) -> None:
        self._store = store
        self._hasher = hasher

    async def sign_up(self, new: NewDriver) -> Driver:
        """Create the driver and queue driver.created; PhoneTakenError if the phone is taken,
        HasherBusyError when the KDF queue is full."""
        password_hash = await self._hasher.hash(new.password)
        async with self._store.transaction() as conn:
            driver = await self._store.insert(conn, new, password_hash=password_hash)
            await _emit(conn, events.DRIVER_CREATED, driver, wire.driver_created(driver))
        return driver

    async def add_vehicle(self, driver_id: str, new: NewVehicle) -> Vehicle:
        """Register a vehicle and queue driver.vehicle_added; DriverNotFoundError for an
        unknown driver, PlateTakenError for a known plate."""
        async with self._store.transaction() as conn:
            version = await self._store.next_version(conn, driver_id)
            vehicle = await self._store.insert_vehicle(conn, driver_id, new)
            await add_event(
                conn,
                subject=events.DRIVER_VEHICLE_ADDED,
                aggregate_id=driver_id,
                aggregate_version=version,
                payload=wire.vehicle_added(vehicle),
            )
        return vehicle

    async def authenticate(self, phone: str, password: str) -> str:
        """The id of the driver with this phone and password; BadCredentialsError otherwise,
        HasherBusyError when the KDF queue is full."""
        # Login attempts are limited per phone and per client at the edge (edge/logins.py),
        # before they reach this KDF work.
        account_id = await self._hasher.authenticate(
            await self._store.password_hash(phone), password
        )
        if account_id is None:
            raise BadCredentialsError("wrong phone number or password")
        return account_id

    async def go_online(self, driver_id: str, vehicle_id: str) -> Driver:
        """Put the driver online with the vehicle and queue driver.online, unless already so
        (see Driver.vehicle_to_go_online for the errors)."""
        async with self._store.transaction() as conn:
            driver = await self._store.load(conn, driver_id, lock=True)
            vehicle = driver.vehicle_to_go_online(vehicle_id)
            if vehicle is None:
                return driver
            await self._store.set_online(conn, driver_id, vehicle.id)
            driver = await self._store.load(conn, driver_id)
            await _emit(conn, events.DRIVER_ONLINE, driver, wire.driver_online(driver, vehicle))
        return driver

    async def go_offline(self, driver_id: str) -> Driver:
        """Take the driver offline and queue driver.offline, unless already offline;
        OnTripError during a trip."""
        async with self._store.transaction() as conn:
            driver = await self._store.load(conn, driver_id, lock=True)
            if not driver.must_go_offline():
                return driver
            await self._store.set_offline(conn, driver_id)
            driver = await self._store.load(conn, driver_id)
            await _emit(conn, events.DRIVER_OFFLINE, driver, wire.driver_offline(driver_id))
        return driver

    async def apply_trip_hold(self, hold: TripHold, *, consumer: str, event_id: str) -> bool:
        """Record that a trip holds or released the driver, once per event and only if newer
        than what is known about that (driver, trip); then the driver's current trip is their
        newest live one. False when the event changed nothing."""
        async with self._store.transaction() as conn:
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            # Lock the driver before the hold rows, in the same order as GoOnline/GoOffline.
            if not await self._store.lock_if_exists(conn, hold.driver_id):
                return False  # a driver of another deployment (or test): not ours
            return await self._store.record_hold(conn, hold)

    async def apply_rating(self, rating: DriverRating, *, consumer: str, event_id: str) -> bool:
        """Count a rider's rating of a driver once per event and once per trip."""
        async with self._store.transaction() as conn:
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            return await self._store.add_rating(conn, rating)


async def _emit(conn: asyncpg.Connection, subject: str, driver: Driver, payload: Message) -> None:
    await add_event(
        conn,
        subject=subject,
        aggregate_id=driver.id,
        aggregate_version=driver.version,
        payload=payload,
    )
