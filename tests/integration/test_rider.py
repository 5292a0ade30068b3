"""The rider service against real Postgres and NATS, through a real gRPC channel."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from nats.js import JetStreamContext

from protos import events
from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2 as pb
from protos.rider.v1 import rider_pb2_grpc
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rider.app import MIGRATIONS, running
from rideshare import bus
from rideshare.db import create_pool, quote_schema
from rideshare.migrations import apply_migrations
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, grpc_status, publish_event
from tests.integration.hostile import BAD_IDS, forged_tokens, invalid_argument

Stub: TypeAlias = "rider_pb2_grpc.RiderServiceAsyncStub"
PASSWORD = "correct horse battery"


@dataclass
class Rig:
    stub: Stub
    db: asyncpg.Pool
    js: JetStreamContext


@contextlib.asynccontextmanager
async def rider_service(infra: InfraUrls, schema: str) -> AsyncIterator[Rig]:
    settings = ServiceSettings(name="rider", infra=infra, grpc_port=0, shutdown_grace_s=1.0)
    nc = await bus.connect(infra.nats_url, name=f"test-{schema}")
    try:
        db = await create_pool(infra.postgres_dsn, schema=schema, max_size=2)
        try:
            async with (
                running(settings, schema=schema, durable=schema) as server,
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            ):
                yield Rig(rider_pb2_grpc.RiderServiceStub(channel), db, nc.jetstream(timeout=5))
            # Dropped once the service stopped: its relay and consumer use these tables.
            await db.execute(f"DROP SCHEMA {quote_schema(schema)} CASCADE")
        finally:
            await db.close()
        with contextlib.suppress(Exception):
            await nc.jetstream(timeout=5).delete_consumer(events.STREAM, schema)
    finally:
        await nc.close()


@pytest.fixture
async def rig(infra: InfraUrls, unique_name: str) -> AsyncIterator[Rig]:
    async with asyncio.timeout(30), rider_service(infra, unique_name) as rig:
        yield rig


def phone() -> str:
    return "+49151" + str(uuid.uuid4().int)[:8]


async def create(stub: Stub, number: str | None = None, **fields: str) -> pb.Rider:
    request = pb.CreateRiderRequest(
        name="Ada", phone=number or phone(), password=PASSWORD, **fields
    )
    return await stub.CreateRider(request, timeout=10)


def ts(value: datetime) -> dict[str, object]:
    return {"seconds": int(value.timestamp()), "nanos": value.microsecond * 1000}


async def test_migrations_apply_to_an_empty_schema_and_a_rerun_applies_nothing(
    infra: InfraUrls, unique_name: str
) -> None:
    async with asyncio.timeout(20):
        pool = await create_pool(infra.postgres_dsn, schema=unique_name, max_size=2)
        try:
            first = await apply_migrations(pool, schema=unique_name, directory=MIGRATIONS)
            again = await apply_migrations(pool, schema=unique_name, directory=MIGRATIONS)
            tables = {
                r["table_name"]
                for r in await pool.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                    unique_name,
                )
            }
        finally:
            await pool.execute(f"DROP SCHEMA {quote_schema(unique_name)} CASCADE")
            await pool.close()
    assert "0001_init.sql" in first
    assert again == []
    assert {"riders", "rider_ratings", "trips", "outbox", "processed_events"} <= tables


async def test_signup_get_and_update_emit_events_through_the_outbox(rig: Rig) -> None:
    number = phone()
    created = await create(rig.stub, number, email="ada@example.com")
    assert (created.name, created.phone, created.email) == ("Ada", number, "ada@example.com")
    assert created.rating_count == 0 and created.rating_avg == 0.0
    assert await rig.stub.GetRider(pb.GetRiderRequest(rider_id=created.id), timeout=5) == created

    updated = await rig.stub.UpdateRider(
        pb.UpdateRiderRequest(rider_id=created.id, email=""), timeout=5
    )
    unchanged = await rig.stub.UpdateRider(
        pb.UpdateRiderRequest(rider_id=created.id, name="Ada"), timeout=5
    )

    assert (updated.name, updated.email) == ("Ada", "")
    assert unchanged == updated
    rows = await rig.db.fetch(
        "SELECT subject, aggregate_id, aggregate_version FROM outbox ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (events.RIDER_CREATED, created.id, 1),
        (events.RIDER_UPDATED, created.id, 2),
    ]
    stored = await rig.db.fetchval("SELECT password_hash FROM riders WHERE id = $1", created.id)
    assert stored.startswith("scrypt$") and PASSWORD not in stored


async def test_two_concurrent_signups_with_one_phone_exactly_one_wins(rig: Rig) -> None:
    number = phone()
    results = await asyncio.gather(
        create(rig.stub, number), create(rig.stub, number), return_exceptions=True
    )

    riders = [r for r in results if isinstance(r, pb.Rider)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(riders) == 1
    assert [e.code() for e in errors] == [grpc.StatusCode.ALREADY_EXISTS]
    assert await rig.db.fetchval("SELECT count(*) FROM riders WHERE phone = $1", number) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phone": "015112345678"}, "E.164"),
        ({"phone": "+49 151 1234 5678"}, "E.164"),
        ({"password": "short"}, "at least 8"),
        ({"name": "  "}, "name"),
        ({"email": "not-an-email"}, "email"),
        # Only the database notices a NUL: its data exception is still the caller's fault.
        ({"name": "Ada\x00Lovelace"}, "invalid byte sequence"),
    ],
)
async def test_invalid_signups_are_invalid_argument(
    rig: Rig, fields: dict[str, str], message: str
) -> None:
    request = pb.CreateRiderRequest(name="Ada", phone=phone(), password=PASSWORD)
    for key, value in fields.items():
        setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.CreateRider(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert PASSWORD not in (info.value.details() or "")


async def test_unknown_ids_are_not_found_and_bad_pages_invalid(rig: Rig) -> None:
    unknown = str(uuid.uuid4())
    rider = await create(rig.stub)
    s = rig.stub
    assert await grpc_status(s.GetRider(pb.GetRiderRequest(rider_id=unknown), timeout=5)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert await grpc_status(
        s.UpdateRider(pb.UpdateRiderRequest(rider_id=unknown, name="X"), timeout=5)
    ) == (grpc.StatusCode.NOT_FOUND)
    assert await grpc_status(s.ListTrips(pb.ListTripsRequest(rider_id=unknown), timeout=5)) == (
        grpc.StatusCode.NOT_FOUND
    )
    for bad in (
        pb.ListTripsRequest(rider_id=rider.id, page_token="garbage!"),
        pb.ListTripsRequest(rider_id=rider.id, page_token="eyJ2IjoxfQ"),  # {"v":1}
        pb.ListTripsRequest(rider_id=rider.id, page_size=-1),
    ):
        assert await grpc_status(s.ListTrips(bad, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_rider_ids_and_forged_page_tokens_are_invalid_argument(rig: Rig) -> None:
    rider = await create(rig.stub)
    s = rig.stub
    for bad in [*BAD_IDS, ""]:
        for call in (
            s.GetRider(pb.GetRiderRequest(rider_id=bad), timeout=5),
            s.UpdateRider(pb.UpdateRiderRequest(rider_id=bad, name="X"), timeout=5),
            s.ListTrips(pb.ListTripsRequest(rider_id=bad), timeout=5),
        ):
            assert (await invalid_argument(call)).startswith("rider_id")
    key: list[object] = ["2026-01-01T00:00:00+00:00", "t1"]
    for token in forged_tokens(f"rider.trips:{rider.id}", key, by_time=True):
        await invalid_argument(
            s.ListTrips(pb.ListTripsRequest(rider_id=rider.id, page_token=token), timeout=5)
        )


async def test_authenticate_accepts_the_right_password_only(rig: Rig) -> None:
    number = phone()
    rider = await create(rig.stub, number)

    ok = await rig.stub.Authenticate(
        pb.AuthenticateRequest(phone=number, password=PASSWORD), timeout=5
    )
    wrong = rig.stub.Authenticate(pb.AuthenticateRequest(phone=number, password="x" * 9), timeout=5)
    nobody = rig.stub.Authenticate(
        pb.AuthenticateRequest(phone=phone(), password=PASSWORD), timeout=5
    )

    assert ok.rider_id == rider.id
    assert await grpc_status(wrong) == grpc.StatusCode.UNAUTHENTICATED
    assert await grpc_status(nobody) == grpc.StatusCode.UNAUTHENTICATED


def _requested(trip_id: str, rider_id: str, at: datetime) -> trip_events.TripRequested:
    return trip_events.TripRequested(
        trip_id=trip_id,
        rider_id=rider_id,
        vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
        pickup=common_pb2.LatLng(lat=52.52, lng=13.40),
        dropoff=common_pb2.LatLng(lat=52.50, lng=13.45),
        fare=common_pb2.Money(amount_minor=1500, currency="EUR"),
        requested_at=ts(at),  # type: ignore[arg-type]
    )


async def test_trip_history_is_built_from_trip_events_newest_first_in_pages(rig: Rig) -> None:
    rider = await create(rig.stub)
    now = datetime.now(UTC)
    a, b, c = (f"trip-{uuid.uuid4().hex[:8]}" for _ in range(3))
    driver_id = f"driver-{uuid.uuid4().hex[:8]}"
    # Trip a: completed, its events out of order (completed before accepted).
    await publish_event(
        rig.js,
        events.TRIP_REQUESTED,
        _requested(a, rider.id, now - timedelta(hours=2)),
        aggregate_id=a,
        version=1,
    )
    await publish_event(
        rig.js,
        events.TRIP_COMPLETED,
        trip_events.TripCompleted(
            trip_id=a,
            rider_id=rider.id,
            driver_id=driver_id,
            fare=common_pb2.Money(amount_minor=1725, currency="EUR"),
            completed_at=ts(now - timedelta(hours=1)),  # type: ignore[arg-type]
        ),
        aggregate_id=a,
        version=6,
    )
    await publish_event(
        rig.js,
        events.TRIP_ACCEPTED,
        trip_events.TripAccepted(trip_id=a, rider_id=rider.id, driver_id="someone-else"),
        aggregate_id=a,
        version=3,
    )
    # Trip b: cancelled without a fee; trip c: just requested.
    await publish_event(
        rig.js,
        events.TRIP_REQUESTED,
        _requested(b, rider.id, now - timedelta(hours=1)),
        aggregate_id=b,
        version=1,
    )
    await publish_event(
        rig.js,
        events.TRIP_CANCELLED,
        trip_events.TripCancelled(trip_id=b, rider_id=rider.id, cancelled_by=trip_pb2.ACTOR_RIDER),
        aggregate_id=b,
        version=2,
    )
    await publish_event(
        rig.js, events.TRIP_REQUESTED, _requested(c, rider.id, now), aggregate_id=c, version=1
    )

    async def all_three() -> bool:
        reply = await rig.stub.ListTrips(pb.ListTripsRequest(rider_id=rider.id), timeout=5)
        return [t.trip_id for t in reply.trips] == [c, b, a] and reply.trips[1].state == (
            trip_pb2.TRIP_STATE_CANCELLED
        )

    await eventually(all_three, timeout_s=15)
    first = await rig.stub.ListTrips(pb.ListTripsRequest(rider_id=rider.id, page_size=2), timeout=5)
    second = await rig.stub.ListTrips(
        pb.ListTripsRequest(rider_id=rider.id, page_size=2, page_token=first.next_page_token),
        timeout=5,
    )
    other = await create(rig.stub)
    foreign = rig.stub.ListTrips(
        pb.ListTripsRequest(rider_id=other.id, page_token=first.next_page_token), timeout=5
    )

    assert [t.trip_id for t in first.trips] == [c, b] and first.next_page_token
    assert [t.trip_id for t in second.trips] == [a] and second.next_page_token == ""
    assert await grpc_status(foreign) == grpc.StatusCode.INVALID_ARGUMENT
    done = second.trips[0]
    assert done.state == trip_pb2.TRIP_STATE_COMPLETED
    assert done.driver_id == driver_id  # the late, older trip.accepted did not win
    assert (done.fare.amount_minor, done.fare.currency) == (1725, "EUR")
    assert (done.pickup.lat, done.dropoff.lng) == (52.52, 13.45)  # filled in from requested
    assert done.vehicle_class == common_pb2.VEHICLE_CLASS_STANDARD
    assert done.HasField("completed_at") and not done.HasField("ended_at")
    cancelled = first.trips[1]
    assert (cancelled.fare.amount_minor, cancelled.fare.currency) == (0, "EUR")
    assert cancelled.HasField("ended_at")
    assert first.trips[0].state == trip_pb2.TRIP_STATE_REQUESTED
    assert first.trips[0].fare.amount_minor == 1500


async def test_a_redelivered_event_changes_the_read_model_once(rig: Rig) -> None:
    rider = await create(rig.stub)
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    rated = trip_events.TripRated(
        trip_id=trip_id,
        rater=trip_pb2.ACTOR_DRIVER,
        rater_id="some-driver",
        ratee_id=rider.id,
        stars=4,
    )
    first = await publish_event(rig.js, events.TRIP_RATED, rated, aggregate_id=trip_id, version=7)
    await publish_event(
        rig.js,
        events.TRIP_RATED,
        rated,
        aggregate_id=trip_id,
        version=7,
        event_id=first.event_id,
        msg_id=f"{first.event_id}-redelivered",
    )
    # A rider's rating of the driver is not this rider's rating.
    rated_by_rider = trip_events.TripRated(
        trip_id=trip_id, rater=trip_pb2.ACTOR_RIDER, ratee_id=rider.id, stars=1
    )
    await publish_event(rig.js, events.TRIP_RATED, rated_by_rider, aggregate_id=trip_id, version=8)
    # Handled in stream order: once the marker trip shows, both copies were seen.
    marker = f"trip-{uuid.uuid4().hex[:8]}"
    await publish_event(
        rig.js,
        events.TRIP_REQUESTED,
        _requested(marker, rider.id, datetime.now(UTC)),
        aggregate_id=marker,
        version=1,
    )

    async def marker_seen() -> bool:
        reply = await rig.stub.ListTrips(pb.ListTripsRequest(rider_id=rider.id), timeout=5)
        return bool(reply.trips)

    await eventually(marker_seen, timeout_s=15)
    after = await rig.stub.GetRider(pb.GetRiderRequest(rider_id=rider.id), timeout=5)
    assert (after.rating_count, after.rating_avg) == (1, 4.0)
    assert (
        await rig.db.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = $1", first.event_id
        )
        == 1
    )
