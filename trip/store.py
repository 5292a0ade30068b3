"""asyncpg adapter of the trip service: quotes, trips, their history, pending offers, surge,
and dispatch's claims on trips.

Every write of a trip is ``UPDATE trips ... WHERE id=$1 AND version=$2`` plus its history
rows, its pending-offer row and its outbox events, in the caller's transaction. The unique
indexes of ``migrations/0001_init.sql`` make double booking impossible; their violations come
back as the matching domain error, never as a bare database error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from rideshare.outbox import add_events
from trip.domain import (
    Actor,
    Assignment,
    ConcurrencyError,
    DriverUnavailableError,
    FareBasis,
    FareRule,
    FareSettlement,
    LatLng,
    Money,
    Offer,
    OfferMismatchError,
    Quote,
    QuoteUsedError,
    RiderHasLiveTripError,
    Transition,
    Trip,
    TripState,
    VehicleClass,
)
from trip.explain import DispatchRound, candidates_from_json
from trip.liveness import Cutoffs
from trip.machine import LIVE_STATES
from trip.pricing import MeasureSource

if TYPE_CHECKING:
    from trip.wire import Event

__all__ = ["TripStore"]

_LIVE = [s.value for s in (TripState.REQUESTED, TripState.DISPATCHING)]
_HOLDING = sorted(s.value for s in LIVE_STATES)


# Unique constraints -> the domain error a violation means.
_UNIQUE_ERRORS: dict[str, tuple[type[Exception], str]] = {
    "trips_one_live_trip_per_rider": (RiderHasLiveTripError, "rider {rider} has a live trip"),
    "trips_one_live_trip_per_driver": (
        DriverUnavailableError,
        "driver {driver} holds another live trip",
    ),
    "offers_driver_id_key": (DriverUnavailableError, "driver {driver} holds another offer"),
    "offers_trip_id_key": (OfferMismatchError, "trip {trip} has another offer pending"),
    "offers_one_per_trip_slot": (OfferMismatchError, "trip {trip} has another offer pending"),
    "trips_quote_id_key": (QuoteUsedError, "quote {quote} booked a trip already"),
}

_TRIP_COLUMNS = """
    t.id, t.rider_id, t.vehicle_class, t.state, t.version, t.quote_id, t.pickup_lat,
    t.pickup_lng, t.dropoff_lat, t.dropoff_lng, t.pickup_address, t.dropoff_address,
    t.quoted_fare_minor, t.currency, t.surge_multiplier, t.estimated_distance_m,
    t.estimated_duration_s, t.requested_at, t.driver_id, t.offer_attempts,
    t.excluded_driver_ids, t.dispatch_started_at, t.final_fare_minor, t.distance_m,
    t.duration_s, t.cancellation_fee_minor, t.cancelled_by, t.cancel_reason, t.rider_rating,
    t.driver_rating, t.accepted_at, t.arrived_at, t.started_at, t.completed_at,
    t.cancelled_at, t.ended_at, t.fare_basis, t.flagged_at, t.flag_reason,
    t.fare_settlement::text AS fare_settlement,
    o.offer_ids, o.offer_driver_ids, o.offer_attempts_made, o.offer_offered_ats,
    o.offer_expires_ats, o.offer_slots
"""
# The pending offers of a trip (parallel offers: more than one) as one array per column.
_TRIP_FROM = """FROM trips t LEFT JOIN LATERAL (
    SELECT array_agg(offer_id ORDER BY attempt) AS offer_ids,
           array_agg(driver_id ORDER BY attempt) AS offer_driver_ids,
           array_agg(attempt ORDER BY attempt) AS offer_attempts_made,
           array_agg(offered_at ORDER BY attempt) AS offer_offered_ats,
           array_agg(expires_at ORDER BY attempt) AS offer_expires_ats,
           array_agg(slot ORDER BY attempt) AS offer_slots
    FROM offers WHERE trip_id = t.id) o ON true"""

# A dispatch claim only saves work (the version check is what keeps two offers of a trip
# apart), so one lost in a crash costs nothing: its transaction need not wait for the disk.
_CLAIM_NEED_NOT_BE_DURABLE = "SET LOCAL synchronous_commit = off"


def _unclaimed(now: str) -> str:
    """SQL: no dispatch claim holds on the trip row at the time parameter ``now``."""
    return (
        f"(dispatch_claim_until IS NULL OR dispatch_claim_until <= {now} "
        "OR dispatch_claim_version <> version)"
    )


_END_CLAIM = (
    "UPDATE trips SET dispatch_claim = NULL, dispatch_claim_until = NULL "
    "WHERE id = $1 AND dispatch_claim = $2"
)


class TripStore:
    """The trip service's Postgres schema. Methods taking ``conn`` run in the caller's
    transaction; the others open their own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction, committed when the block exits cleanly."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # --- quotes and surge -------------------------------------------------------------------

    async def save_quote(self, quote: Quote) -> None:
        """Store a new quote."""
        await self._pool.execute(
            "INSERT INTO quotes (quote_id, rider_id, pickup_lat, pickup_lng, dropoff_lat, "
            "dropoff_lng, vehicle_class, price_minor, currency, surge_multiplier, distance_m, "
            "duration_s, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            quote.quote_id,
            quote.rider_id,
            quote.pickup.lat,
            quote.pickup.lng,
            quote.dropoff.lat,
            quote.dropoff.lng,
            quote.vehicle_class.value,
            quote.price.amount_minor,
            quote.price.currency,
            quote.surge_multiplier,
            quote.distance_m,
            quote.duration_s,
            quote.created_at,
            quote.expires_at,
        )

    async def get_quote(self, conn: asyncpg.Connection, quote_id: str) -> Quote | None:
        """The quote, or None."""
        row = await conn.fetchrow("SELECT * FROM quotes WHERE quote_id = $1", quote_id)
        if row is None:
            return None
        return Quote(
            quote_id=row["quote_id"],
            rider_id=row["rider_id"],
            pickup=LatLng(row["pickup_lat"], row["pickup_lng"]),
            dropoff=LatLng(row["dropoff_lat"], row["dropoff_lng"]),
            vehicle_class=VehicleClass(row["vehicle_class"]),
            price=Money(row["price_minor"], row["currency"]),
            surge_multiplier=row["surge_multiplier"],
            distance_m=row["distance_m"],
            duration_s=row["duration_s"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            trip_id=row["trip_id"],
        )

    async def surge_inputs(
        self, cells: Sequence[str], cell: str, *, since: datetime
    ) -> tuple[int, float | None]:
        """Trips requested in ``cells`` since ``since``, and ``cell``'s stored multiplier."""
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM trips WHERE pickup_cell = ANY($1::text[]) "
            "AND requested_at >= $2) AS demand, "
            "(SELECT multiplier FROM surge WHERE cell = $3) AS previous",
            list(cells),
            since,
            cell,
        )
        assert row is not None
        return int(row["demand"]), row["previous"]

    async def save_surge(self, cell: str, multiplier: float, *, now: datetime) -> None:
        """Remember ``cell``'s multiplier as the next smoothing's previous value."""
        await self._pool.execute(
            "INSERT INTO surge (cell, multiplier, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (cell) DO UPDATE SET multiplier = $2, updated_at = $3",
            cell,
            multiplier,
            now,
        )

    # --- trips ------------------------------------------------------------------------------

    async def create_trip(
        self, conn: asyncpg.Connection, trip: Trip, *, pickup_cell: str, events: Sequence[Event]
    ) -> None:
        """Insert a new trip, mark its quote used, record its history and events. A unique
        index refusing the trip raises its domain error, and the caller's transaction is then
        unusable (no savepoint: the caller rolls back, and a savepoint costs two statements
        on every booking)."""
        try:
            await conn.execute(
                "INSERT INTO trips (id, rider_id, vehicle_class, state, version, quote_id, "
                "pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, pickup_cell, "
                "pickup_address, dropoff_address, quoted_fare_minor, currency, "
                "surge_multiplier, estimated_distance_m, estimated_duration_s, requested_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
                "$16, $17, $18, $19)",
                trip.id,
                trip.rider_id,
                trip.vehicle_class.value,
                trip.state.value,
                trip.version,
                trip.quote_id,
                trip.pickup.lat,
                trip.pickup.lng,
                trip.dropoff.lat,
                trip.dropoff.lng,
                pickup_cell,
                trip.pickup_address,
                trip.dropoff_address,
                trip.quoted_fare.amount_minor,
                trip.quoted_fare.currency,
                trip.surge_multiplier,
                trip.estimated_distance_m,
                trip.estimated_duration_s,
                trip.requested_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _unique_error(exc, trip) from None
        used = await conn.execute(
            "UPDATE quotes SET trip_id = $2 WHERE quote_id = $1 AND trip_id IS NULL",
            trip.quote_id,
            trip.id,
        )
        if used != "UPDATE 1":
            raise QuoteUsedError(f"quote {trip.quote_id} booked a trip already")
        await self._insert_history(conn, trip, since_version=0)
        await self._add_events(conn, trip, events)

    async def get_trip(
        self, conn: asyncpg.Connection, trip_id: str, *, history: bool = True
    ) -> Trip | None:
        """The trip with its pending offer (and its history when asked), or None."""
        row = await conn.fetchrow(f"SELECT {_TRIP_COLUMNS} {_TRIP_FROM} WHERE t.id = $1", trip_id)
        if row is None:
            return None
        return await self._with_history(conn, _trip(row), history)

    async def claim_for_dispatch(
        self, trip_id: str, *, claim: str, now: datetime, until: datetime
    ) -> Trip | None:
        """The trip, claimed for dispatch by ``claim`` until ``until``, if it is still looking
        for a driver and no other claim on it holds at ``now``; None otherwise. A claim holds
        until its time is up or the trip is written (its version changes), whichever is first:
        the commit of a dispatch step ends its claim without a statement of its own.

        A claim is a lease in the trip's row, taken in a short transaction that has committed
        when this returns: no lock or transaction stays open while its holder works. It keeps
        two dispatchers from working on one trip at once; what keeps them from both
        committing an offer is the version check of :meth:`save`.
        """
        claimed = await self.claim_many_for_dispatch([trip_id], claim=claim, now=now, until=until)
        return claimed[0] if claimed else None

    async def claim_many_for_dispatch(
        self, trip_ids: Sequence[str], *, claim: str, now: datetime, until: datetime
    ) -> list[Trip]:
        """:meth:`claim_for_dispatch` of several trips in one transaction (a dispatch
        window's): the ones claimed, without history, in no particular order."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CLAIM_NEED_NOT_BE_DURABLE)
            claimed = await conn.fetch(
                "UPDATE trips SET dispatch_claim = $2, dispatch_claim_until = $4, "
                "dispatch_claim_version = version "
                f"WHERE id = ANY($1::text[]) AND state = ANY($5::text[]) AND {_unclaimed('$3')} "
                "RETURNING id",
                list(trip_ids),
                claim,
                now,
                until,
                _LIVE,
            )
            if not claimed:
                return []
            # Read in a statement of its own: the UPDATE may have waited for a concurrent
            # change of a row, and a row joined in its statement (the offer) would still
            # come from the statement's older snapshot.
            rows = await conn.fetch(
                f"SELECT {_TRIP_COLUMNS} {_TRIP_FROM} WHERE t.id = ANY($1::text[])",
                [r["id"] for r in claimed],
            )
            return [_trip(row) for row in rows]

    async def save_first_offers(
        self, changes: Sequence[tuple[Trip, Trip, Event, DispatchRound]], *, at: datetime
    ) -> set[str]:
        """Commit a dispatch window's offers in one transaction: each change is a trip as read
        (``before``) and as offered (``after``: dispatch started if it had not, one new
        offer, nothing else changed), its ``trip.offered`` event and its dispatch round.

        Each trip is version-checked on its own: the ids of the trips written are returned,
        and a trip that changed since it was read is left out (the caller goes on with it
        one by one). A unique index refusing an offer (the driver holds another offer or a
        trip) fails the whole transaction with DriverUnavailableError: nothing is written.
        """
        for before, after, _, _ in changes:
            _check_first_offer(before, after)
        async with self._pool.acquire() as conn, conn.transaction():
            written = await conn.fetch(
                "UPDATE trips t SET state = u.state, version = u.version, "
                "offer_attempts = u.offer_attempts, dispatch_started_at = u.dispatch_started_at "
                "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::int[], "
                "$6::timestamptz[]) AS u(id, read_version, state, version, offer_attempts, "
                "dispatch_started_at) "
                "WHERE t.id = u.id AND t.version = u.read_version RETURNING t.id",
                [after.id for _, after, _, _ in changes],
                [before.version for before, _, _, _ in changes],
                [after.state.value for _, after, _, _ in changes],
                [after.version for _, after, _, _ in changes],
                [after.offer_attempts for _, after, _, _ in changes],
                [after.dispatch_started_at for _, after, _, _ in changes],
            )
            won = {r["id"] for r in written}
            kept = [c for c in changes if c[1].id in won]
            if not kept:
                return won
            offers = [(after, after.offers[-1]) for _, after, _, _ in kept]
            try:
                await conn.execute(
                    "INSERT INTO offers (offer_id, trip_id, driver_id, attempt, offered_at, "
                    "expires_at, slot) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
                    "$4::int[], $5::timestamptz[], $6::timestamptz[], $7::int[])",
                    [o.offer_id for _, o in offers],
                    [t.id for t, _ in offers],
                    [o.driver_id for _, o in offers],
                    [o.attempt for _, o in offers],
                    [o.offered_at for _, o in offers],
                    [o.expires_at for _, o in offers],
                    [o.slot for _, o in offers],
                )
            except asyncpg.UniqueViolationError as exc:
                raise _unique_error(exc, offers[0][0]) from None
            await conn.executemany(
                _INSERT_TRANSITION,
                [
                    _transition_row(after, r)
                    for before, after, _, _ in kept
                    for r in after.history
                    if r.version > before.version
                ],
            )
            await add_events(
                conn,
                [
                    (subject, after.id, after.version, payload)
                    for _, after, (subject, payload), _ in kept
                ],
            )
            await conn.executemany(
                _INSERT_ROUND,
                [_round_row(after, round_, at) for _, after, _, round_ in kept],
            )
        return won

    async def end_dispatch_claim(self, trip_id: str, *, claim: str) -> None:
        """Give up ``claim`` on the trip (nothing when another claim replaced it)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CLAIM_NEED_NOT_BE_DURABLE)
            await conn.execute(_END_CLAIM, trip_id, claim)

    async def find_trip(self, trip_id: str) -> Trip | None:
        """The trip with its pending offer, without history, or None (no transaction)."""
        async with self._pool.acquire() as conn:
            return await self.get_trip(conn, trip_id, history=False)

    async def save_round(
        self, conn: asyncpg.Connection, trip: Trip, round_: DispatchRound, *, at: datetime
    ) -> None:
        """Record a dispatch round of ``trip`` (as the round leaves it) in the caller's
        transaction, the one that commits the round's offer or giving up."""
        await conn.execute(_INSERT_ROUND, *_round_row(trip, round_, at))

    async def dispatch_rounds(self, conn: asyncpg.Connection, trip_id: str) -> list[DispatchRound]:
        """The trip's dispatch rounds, oldest first."""
        rows = await conn.fetch(
            "SELECT * FROM dispatch_rounds WHERE trip_id = $1 ORDER BY round", trip_id
        )
        rounds = []
        for r in rows:
            candidates, excluded, offers = candidates_from_json(r["candidates"])
            rounds.append(
                DispatchRound(
                    r["policy"],
                    r["window_trips"],
                    candidates,
                    excluded,
                    offers,
                    r["gave_up"],
                    version=r["version"],
                    number=r["round"],
                    at=r["at"],
                )
            )
        return rounds

    async def due_for_dispatch(self, *, now: datetime, limit: int) -> list[str]:
        """Trips dispatch must advance: REQUESTED or DISPATCHING without an offer, or whose
        offers all expired, and not claimed by a dispatcher. Oldest first."""
        rows = await self._pool.fetch(
            "SELECT t.id FROM trips t WHERE t.state = ANY($1::text[]) AND NOT EXISTS "
            "(SELECT 1 FROM offers o WHERE o.trip_id = t.id AND o.expires_at > $2) "
            f"AND {_unclaimed('$2')} "
            "ORDER BY t.requested_at LIMIT $3",
            _LIVE,
            now,
            limit,
        )
        return [row["id"] for row in rows]

    async def due_for_sweep(
        self, cutoffs: Cutoffs, *, after: tuple[datetime, str] | None = None, limit: int
    ) -> list[tuple[str, str | None, datetime]]:
        """(trip id, assigned driver, requested at) of the live trips whose clock may have run
        out (see ``liveness.cutoffs``), oldest first, one page after ``after`` (the last
        row's (requested at, id)). Read without locks: the sweeper decides again on each trip
        inside its own version-checked transaction."""
        rows = await self._pool.fetch(
            "SELECT id, driver_id, requested_at FROM trips WHERE state IN "
            "('REQUESTED', 'DISPATCHING', 'ACCEPTED', 'ARRIVED', 'IN_PROGRESS') AND ("
            "requested_at <= $5 "
            "OR (state IN ('REQUESTED', 'DISPATCHING') "
            "AND COALESCE(dispatch_started_at, requested_at) <= $1) "
            "OR (state = 'ACCEPTED' AND accepted_at <= $2) "
            "OR (state = 'ARRIVED' AND arrived_at <= $3) "
            "OR (state = 'IN_PROGRESS' AND started_at <= $4)) "
            "AND ($7::timestamptz IS NULL OR (requested_at, id) > ($7, $8)) "
            "ORDER BY requested_at, id LIMIT $6",
            cutoffs.dispatch_started,
            cutoffs.accepted,
            cutoffs.arrived,
            cutoffs.started,
            cutoffs.requested,
            limit,
            after[0] if after is not None else None,
            after[1] if after is not None else "",
        )
        return [(row["id"], row["driver_id"], row["requested_at"]) for row in rows]

    async def trips_of_driver(self, conn: asyncpg.Connection, driver_id: str) -> list[str]:
        """Ids of the live trips holding ``driver_id``: by a pending offer or as assigned."""
        rows = await conn.fetch(
            "SELECT trip_id AS id FROM offers WHERE driver_id = $1 UNION "
            "SELECT id FROM trips WHERE driver_id = $1 "
            "AND state IN ('ACCEPTED', 'ARRIVED', 'IN_PROGRESS')",
            driver_id,
        )
        return [row["id"] for row in rows]

    async def held_elsewhere(self, driver_ids: Sequence[str], *, trip_id: str) -> set[str]:
        """Which of ``driver_ids`` a pending offer of another trip, or a live trip, holds."""
        rows = await self._pool.fetch(
            "SELECT driver_id FROM offers WHERE driver_id = ANY($1::text[]) AND trip_id <> $2 "
            "UNION SELECT driver_id FROM trips WHERE driver_id = ANY($1::text[]) "
            "AND state IN ('ACCEPTED', 'ARRIVED', 'IN_PROGRESS')",
            list(driver_ids),
            trip_id,
        )
        return {row["driver_id"] for row in rows}

    async def active_assignments(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> list[Assignment]:
        """Drivers held by live trips (assigned, or with a pending offer), by (driver id, trip
        id), after ``after``; at most ``limit``. Any live state with a driver counts, so a
        state added to the machine is covered without a change here."""
        after_driver, after_trip = after if after is not None else (None, None)
        rows = await self._pool.fetch(
            "SELECT driver_id, trip_id, offered FROM ("
            " SELECT driver_id, id AS trip_id, false AS offered FROM trips"
            " WHERE driver_id IS NOT NULL AND state = ANY($1::text[])"
            " UNION ALL SELECT driver_id, trip_id, true FROM offers) a "
            "WHERE $2::text IS NULL OR (driver_id, trip_id) > ($2, $3::text) "
            "ORDER BY driver_id, trip_id LIMIT $4",
            _HOLDING,
            after_driver,
            after_trip,
            limit,
        )
        return [Assignment(r["driver_id"], r["trip_id"], r["offered"]) for r in rows]

    async def save(
        self, conn: asyncpg.Connection, before: Trip, after: Trip, *, events: Sequence[Event]
    ) -> None:
        """Write ``after`` over ``before`` (version-checked), with its new history records, its
        pending offer and ``events``, in the caller's transaction.

        Raises ConcurrencyError when the trip is no longer at ``before.version``, and
        DriverUnavailableError / OfferMismatchError when a unique index refuses the change
        (the transaction is then unusable and must be rolled back, unless the caller opened
        a savepoint around this call).
        """
        try:
            status = await conn.execute(
                "UPDATE trips SET state = $3, version = $4, driver_id = $5, offer_attempts = $6, "
                "excluded_driver_ids = $7, dispatch_started_at = $8, final_fare_minor = $9, "
                "distance_m = $10, duration_s = $11, cancellation_fee_minor = $12, "
                "cancelled_by = $13, cancel_reason = $14, rider_rating = $15, "
                "driver_rating = $16, accepted_at = $17, arrived_at = $18, started_at = $19, "
                "completed_at = $20, cancelled_at = $21, ended_at = $22, fare_basis = $23, "
                "flagged_at = $24, flag_reason = $25, fare_settlement = $26::jsonb "
                "WHERE id = $1 AND version = $2",
                after.id,
                before.version,
                after.state.value,
                after.version,
                after.driver_id,
                after.offer_attempts,
                sorted(after.excluded_driver_ids),
                after.dispatch_started_at,
                _amount(after.final_fare),
                after.distance_m,
                after.duration_s,
                _amount(after.cancellation_fee),
                after.cancelled_by.value if after.cancelled_by is not None else None,
                after.cancel_reason,
                after.rider_rating,
                after.driver_rating,
                after.accepted_at,
                after.arrived_at,
                after.started_at,
                after.completed_at,
                after.cancelled_at,
                after.ended_at,
                after.fare_basis.value if after.fare_basis is not None else None,
                after.flagged_at,
                after.flag_reason,
                _settlement_json(after.settlement),
            )
            if status != "UPDATE 1":
                raise ConcurrencyError(
                    f"trip {after.id} changed since version {before.version}; try again"
                )
            kept = {o.offer_id for o in after.offers}
            ended = [o.offer_id for o in before.offers if o.offer_id not in kept]
            if ended:
                await conn.execute("DELETE FROM offers WHERE offer_id = ANY($1::text[])", ended)
            known = {o.offer_id for o in before.offers}
            for new in after.offers:
                if new.offer_id in known:
                    continue
                await conn.execute(
                    "INSERT INTO offers (offer_id, trip_id, driver_id, attempt, offered_at, "
                    "expires_at, slot) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    new.offer_id,
                    after.id,
                    new.driver_id,
                    new.attempt,
                    new.offered_at,
                    new.expires_at,
                    new.slot,
                )
        except asyncpg.UniqueViolationError as exc:
            raise _unique_error(exc, after) from None
        await self._insert_history(conn, after, since_version=before.version)
        await self._add_events(conn, after, events)

    async def list_trips(
        self,
        *,
        states: Sequence[TripState],
        rider_id: str | None,
        driver_id: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Trip]:
        """Trips newest first, filtered, without history; ``after`` is the last one seen."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if states:
            where.append(f"t.state = ANY({arg([s.value for s in states])}::text[])")
        if rider_id is not None:
            where.append(f"t.rider_id = {arg(rider_id)}")
        if driver_id is not None:
            where.append(f"t.driver_id = {arg(driver_id)}")
        if after is not None:
            where.append(f"(t.requested_at, t.id) < ({arg(after[0])}, {arg(after[1])})")
        sql = f"SELECT {_TRIP_COLUMNS} {_TRIP_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY t.requested_at DESC, t.id DESC LIMIT {arg(limit)}"
        rows = await self._pool.fetch(sql, *args)
        return [_trip(row) for row in rows]

    # --- helpers ----------------------------------------------------------------------------

    async def _with_history(self, conn: asyncpg.Connection, trip: Trip, history: bool) -> Trip:
        if not history:
            return trip
        rows = await conn.fetch(
            "SELECT * FROM trip_transitions WHERE trip_id = $1 ORDER BY version", trip.id
        )
        records = tuple(
            Transition(
                from_state=TripState(r["from_state"]) if r["from_state"] else None,
                to_state=TripState(r["to_state"]),
                command=r["command"],
                actor=Actor(r["actor"]),
                actor_id=r["actor_id"],
                reason=r["reason"],
                version=r["version"],
                at=r["at"],
            )
            for r in rows
        )
        return replace(trip, history=records)

    async def _insert_history(
        self, conn: asyncpg.Connection, trip: Trip, *, since_version: int
    ) -> None:
        records = [r for r in trip.history if r.version > since_version]
        if not records:
            return
        await conn.executemany(_INSERT_TRANSITION, [_transition_row(trip, r) for r in records])

    async def _add_events(
        self, conn: asyncpg.Connection, trip: Trip, events: Sequence[Event]
    ) -> None:
        await add_events(
            conn, [(subject, trip.id, trip.version, payload) for subject, payload in events]
        )


_INSERT_TRANSITION = (
    "INSERT INTO trip_transitions (trip_id, version, from_state, to_state, command, "
    "actor, actor_id, reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


def _transition_row(trip: Trip, r: Transition) -> tuple[Any, ...]:
    return (
        trip.id,
        r.version,
        r.from_state.value if r.from_state is not None else None,
        r.to_state.value,
        r.command,
        r.actor.value,
        r.actor_id,
        r.reason,
        r.at,
    )


_INSERT_ROUND = (
    "INSERT INTO dispatch_rounds (trip_id, round, version, at, policy, window_trips, "
    "gave_up, candidates) "
    "SELECT $1, COALESCE(MAX(round), 0) + 1, $2, $3, $4, $5, $6, $7::jsonb "
    "FROM dispatch_rounds WHERE trip_id = $1"
)


def _round_row(trip: Trip, round_: DispatchRound, at: datetime) -> tuple[Any, ...]:
    return (
        trip.id,
        trip.version,
        at,
        round_.policy,
        round_.window_trips,
        round_.gave_up,
        round_.candidates_json(),
    )


def _check_first_offer(before: Trip, after: Trip) -> None:
    """Refuses a change that :meth:`TripStore.save_first_offers` would not write whole: it
    writes the columns a first offer changes, and nothing else."""
    written = {"state", "version", "offer_attempts", "dispatch_started_at", "offers", "history"}
    unchanged = replace(after, **{name: getattr(before, name) for name in written})
    if unchanged != before or len(after.offers) != len(before.offers) + 1 or before.offers:
        raise ValueError(f"trip {after.id}: not a first offer, save it with save()")


def _unique_error(exc: asyncpg.UniqueViolationError, trip: Trip) -> Exception:
    name = getattr(exc, "constraint_name", None) or ""
    error, template = _UNIQUE_ERRORS.get(name, (ConcurrencyError, "trip {trip} conflicts"))
    # Of a batch of parallel offers, the newest is the one a refusal is about.
    driver = trip.offers[-1].driver_id if trip.offers else trip.driver_id
    return error(
        template.format(rider=trip.rider_id, driver=driver, trip=trip.id, quote=trip.quote_id)
    )


def _amount(money: Money | None) -> int | None:
    return None if money is None else money.amount_minor


def _money(amount: int | None, currency: str) -> Money | None:
    return None if amount is None else Money(amount, currency)


def _trip(row: asyncpg.Record) -> Trip:
    currency = row["currency"]
    offers: tuple[Offer, ...] = ()
    if row["offer_ids"] is not None:
        offers = tuple(
            Offer(*fields)
            for fields in zip(
                row["offer_ids"],
                row["offer_driver_ids"],
                row["offer_attempts_made"],
                row["offer_offered_ats"],
                row["offer_expires_ats"],
                row["offer_slots"],
                strict=True,
            )
        )
    return Trip(
        id=row["id"],
        rider_id=row["rider_id"],
        vehicle_class=VehicleClass(row["vehicle_class"]),
        state=TripState(row["state"]),
        version=row["version"],
        quote_id=row["quote_id"],
        pickup=LatLng(row["pickup_lat"], row["pickup_lng"]),
        dropoff=LatLng(row["dropoff_lat"], row["dropoff_lng"]),
        quoted_fare=Money(row["quoted_fare_minor"], currency),
        surge_multiplier=row["surge_multiplier"],
        estimated_distance_m=row["estimated_distance_m"],
        estimated_duration_s=row["estimated_duration_s"],
        requested_at=row["requested_at"],
        pickup_address=row["pickup_address"],
        dropoff_address=row["dropoff_address"],
        driver_id=row["driver_id"],
        offers=offers,
        offer_attempts=row["offer_attempts"],
        excluded_driver_ids=frozenset(row["excluded_driver_ids"]),
        dispatch_started_at=row["dispatch_started_at"],
        final_fare=_money(row["final_fare_minor"], currency),
        distance_m=row["distance_m"],
        duration_s=row["duration_s"],
        cancellation_fee=_money(row["cancellation_fee_minor"], currency),
        cancelled_by=Actor(row["cancelled_by"]) if row["cancelled_by"] else None,
        cancel_reason=row["cancel_reason"],
        rider_rating=row["rider_rating"],
        driver_rating=row["driver_rating"],
        accepted_at=row["accepted_at"],
        arrived_at=row["arrived_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        cancelled_at=row["cancelled_at"],
        ended_at=row["ended_at"],
        fare_basis=FareBasis(row["fare_basis"]) if row["fare_basis"] else None,
        flagged_at=row["flagged_at"],
        flag_reason=row["flag_reason"],
        settlement=_settlement(row["fare_settlement"]),
    )


_MONEY_FIELDS = ("charged", "quoted", "band_low", "band_high", "measured_fare")


def _settlement_json(settlement: FareSettlement | None) -> str | None:
    """The settlement as the ``fare_settlement`` document: its fields by name, money as
    ``{"amount_minor", "currency"}``, enums by value."""
    if settlement is None:
        return None
    doc: dict[str, Any] = {}
    for field in fields(settlement):
        name, value = field.name, getattr(settlement, field.name)
        if isinstance(value, Money):
            value = {"amount_minor": value.amount_minor, "currency": value.currency}
        doc[name] = value
    return json.dumps(doc)


def _settlement(text: str | None) -> FareSettlement | None:
    if text is None:
        return None
    doc = json.loads(text)
    for name in _MONEY_FIELDS:
        if doc.get(name) is not None:
            doc[name] = Money(doc[name]["amount_minor"], doc[name]["currency"])
    doc["rule"] = FareRule(doc["rule"])
    doc["distance_source"] = MeasureSource(doc["distance_source"])
    doc["duration_source"] = MeasureSource(doc["duration_source"])
    return FareSettlement(**doc)
