"""The rider service's use cases: sign-up, profile changes, login, and the trip.* effects.

A change to a rider and the rider.* event that reports it share one transaction (the event
goes to the outbox, which the relay publishes after the commit). An effect of a consumed
event claims the event's id in the same transaction, so a redelivery changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from google.protobuf.message import Message

from protos import events
from protos.trip.v1 import trip_pb2
from rider import wire
from rider.billing import PaymentKind
from rider.domain import (
    BadCredentialsError,
    NewRider,
    Rider,
    RiderChanges,
    RiderRating,
    TripUpdate,
)
from rider.payment_store import PaymentStore
from rider.store import RiderStore
from rideshare.bus import claim_event
from rideshare.credentials import PasswordHasher
from rideshare.outbox import add_event

__all__ = ["RiderCommands"]


def _charge_kind(update: TripUpdate) -> PaymentKind | None:
    """What a trip event makes the rider pay for, if anything."""
    if not update.fare_minor or update.fare_minor <= 0 or not update.fare_currency:
        return None
    if update.state == trip_pb2.TRIP_STATE_COMPLETED:
        return PaymentKind.FARE
    if update.state == trip_pb2.TRIP_STATE_CANCELLED:
        return PaymentKind.CANCELLATION_FEE
    return None


class RiderCommands:
    """Every write of the rider service; the KDF runs in the bounded PasswordHasher."""

    def __init__(
        self,
        store: RiderStore,
        hasher: PasswordHasher,
        *,
        payments: PaymentStore | None = None,
        on_charge: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._payments = payments
        self._on_charge = on_charge

    async def sign_up(self, new: NewRider) -> Rider:
        """Create the rider and queue rider.created; PhoneTakenError if the phone is taken,
        HasherBusyError when the KDF queue is full."""
        password_hash = await self._hasher.hash(new.password)
        async with self._store.transaction() as conn:
            rider = await self._store.insert(conn, new, password_hash=password_hash)
            await self._emit(conn, events.RIDER_CREATED, rider, wire.rider_created(rider))
        return rider

    async def update(self, rider_id: str, changes: RiderChanges) -> Rider:
        """Apply ``changes`` and queue rider.updated, unless they change nothing."""
        async with self._store.transaction() as conn:
            rider = await self._store.lock(conn, rider_id)
            if not changes.changes(rider):
                return rider
            rider = await self._store.update(conn, rider_id, changes)
            await self._emit(conn, events.RIDER_UPDATED, rider, wire.rider_updated(rider))
        return rider

    async def authenticate(self, phone: str, password: str) -> str:
        """The id of the rider with this phone and password; BadCredentialsError otherwise,
        HasherBusyError when the KDF queue is full."""
        # Login attempts are limited per phone and per client at the edge (edge/logins.py),
        # before they reach this KDF work.
        account_id = await self._hasher.authenticate(
            await self._store.password_hash(phone), password
        )
        if account_id is None:
            raise BadCredentialsError("wrong phone number or password")
        return account_id

    async def apply_trip(self, update: TripUpdate, *, consumer: str, event_id: str) -> bool:
        """Fold one trip event into the history, once per event id; False if seen before.

        A completed trip's fare and a cancelled trip's fee become a payment record in the
        same transaction (rider/payments.py charges it): once per event, and once per trip
        and kind whatever the events."""
        kind = _charge_kind(update)
        async with self._store.transaction() as conn:
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            await self._store.upsert_trip(conn, update)
            charged = False
            if kind is not None and self._payments is not None:
                charged = await self._payments.create_payment(
                    conn,
                    trip_id=update.trip_id,
                    rider_id=update.rider_id,
                    kind=kind,
                    amount_minor=update.fare_minor or 0,
                    currency=update.fare_currency or "",
                )
        if charged:
            self._on_charge()
        return True

    async def apply_rating(self, rating: RiderRating, *, consumer: str, event_id: str) -> bool:
        """Count a driver's rating of a rider once per event and once per trip."""
        async with self._store.transaction() as conn:
            if not await claim_event(conn, consumer=consumer, event_id=event_id):
                return False
            return await self._store.add_rating(conn, rating)

    @staticmethod
    async def _emit(conn: asyncpg.Connection, subject: str, rider: Rider, payload: Message) -> None:
        await add_event(
            conn,
            subject=subject,
            aggregate_id=rider.id,
            aggregate_version=rider.version,
            payload=payload,
        )
