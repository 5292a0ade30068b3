"""The driver service against real Postgres and NATS, through a real gRPC channel."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from driver.app import MIGRATIONS, running
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2 as pb
from protos.driver.v1 import driver_pb2_grpc
from protos.driver.v1 import events_pb2 as driver_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import bus
from rideshare.db import create_pool, quote_schema
from rideshare.migrations import apply_migrations
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, grpc_status, publish_event
from tests.integration.hostile import BAD_IDS, forged_tokens, invalid_argument

Stub: TypeAlias = "driver_pb2_grpc.DriverServiceAsyncStub"
PASSWORD = "correct horse battery"
COMFORT = common_pb2.VEHICLE_CLASS_COMFORT


@dataclass
class Rig:
    stub: Stub
    db: asyncpg.Pool
    js: JetStreamContext


@contextlib.asynccontextmanager
async def driver_service(infra: InfraUrls, schema: str) -> AsyncIterator[Rig]:
    settings = ServiceSettings(name="driver", infra=infra, grpc_port=0, shutdown_grace_s=1.0)
    nc = await bus.connect(infra.nats_url, name=f"test-{schema}")
    try:
        db = await create_pool(infra.postgres_dsn, schema=schema, max_size=2)
        try:
            async with (
                running(settings, schema=schema, durable=schema) as server,
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            ):
                yield Rig(driver_pb2_grpc.DriverServiceStub(channel), db, nc.jetstream(timeout=5))
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
    async with asyncio.timeout(30), driver_service(infra, unique_name) as rig:
        yield rig


def phone() -> str:
    return "+44770" + str(uuid.uuid4().int)[:8]


def plate() -> str:
    return "B " + uuid.uuid4().hex[:6]


async def create(stub: Stub, number: str | None = None) -> pb.Driver:
    return await stub.CreateDriver(
        pb.CreateDriverRequest(
            name="Bo", phone=number or phone(), password=PASSWORD, license_number="L-123"
        ),
        timeout=10,
    )


async def add_vehicle(stub: Stub, driver_id: str, number_plate: str | None = None) -> pb.Vehicle:
    return await stub.AddVehicle(
        pb.AddVehicleRequest(
            driver_id=driver_id,
            make="Toyota",
            model="Prius",
            plate=number_plate or plate(),
            seats=4,
            vehicle_class=COMFORT,
        ),
        timeout=5,
    )


async def get(stub: Stub, driver_id: str) -> pb.Driver:
    return await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_id), timeout=5)


async def test_migrations_apply_to_an_empty_schema_and_a_rerun_applies_nothing(
    infra: InfraUrls, unique_name: str
) -> None:
    async with asyncio.timeout(20):
        pool = await create_pool(infra.postgres_dsn, schema=unique_name, max_size=2)
        try:
            first = await apply_migrations(pool, schema=unique_name, directory=MIGRATIONS)
            again = await apply_migrations(pool, schema=unique_name, directory=MIGRATIONS)
        finally:
            await pool.execute(f"DROP SCHEMA {quote_schema(unique_name)} CASCADE")
            await pool.close()
    assert "0001_init.sql" in first
    assert again == []


async def test_signup_and_vehicle_are_stored_and_announced(rig: Rig) -> None:
    driver = await create(rig.stub)
    vehicle = await add_vehicle(rig.stub, driver.id, "b-ab 1234")

    fetched = await get(rig.stub, driver.id)

    assert driver.status == pb.DRIVER_STATUS_OFFLINE and not driver.vehicles
    assert vehicle.plate == "B-AB1234"
    assert list(fetched.vehicles) == [vehicle]
    rows = await rig.db.fetch("SELECT subject, aggregate_version FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (events.DRIVER_CREATED, 1),
        (events.DRIVER_VEHICLE_ADDED, 2),
    ]


async def test_concurrent_signups_and_plates_exactly_one_wins(rig: Rig) -> None:
    number = phone()
    signups = await asyncio.gather(
        create(rig.stub, number), create(rig.stub, number), return_exceptions=True
    )
    a, b = await create(rig.stub), await create(rig.stub)
    registrations = await asyncio.gather(
        add_vehicle(rig.stub, a.id, "XY 999 Z"),
        add_vehicle(rig.stub, b.id, "xy999z"),
        return_exceptions=True,
    )

    for results in (signups, registrations):
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 1, results
        assert errors[0].code() == grpc.StatusCode.ALREADY_EXISTS
    assert await rig.db.fetchval("SELECT count(*) FROM drivers WHERE phone = $1", number) == 1
    assert await rig.db.fetchval("SELECT count(*) FROM vehicles WHERE plate = 'XY999Z'") == 1


async def test_bad_input_unknown_ids_and_credentials(rig: Rig) -> None:
    s = rig.stub
    driver = await create(rig.stub)
    unknown = str(uuid.uuid4())
    bad_vehicles: list[dict[str, object]] = [
        {"seats": 0},
        {"seats": 9},
        {"vehicle_class": common_pb2.VEHICLE_CLASS_UNSPECIFIED},
        {"make": ""},
        {"plate": "!!"},
    ]
    for change in bad_vehicles:
        request = pb.AddVehicleRequest(
            driver_id=driver.id,
            make="Kia",
            model="Niro",
            plate=plate(),
            seats=4,
            vehicle_class=COMFORT,
        )
        for key, value in change.items():
            setattr(request, key, value)
        assert (
            await grpc_status(s.AddVehicle(request, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
        )
    for bad_signup in (
        pb.CreateDriverRequest(name="Bo", phone="12345", password=PASSWORD, license_number="L"),
        pb.CreateDriverRequest(name="Bo", phone=phone(), password="short", license_number="L"),
        pb.CreateDriverRequest(name="Bo", phone=phone(), password=PASSWORD, license_number=""),
    ):
        assert await grpc_status(s.CreateDriver(bad_signup, timeout=5)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    for call in (
        s.GetDriver(pb.GetDriverRequest(driver_id=unknown), timeout=5),
        s.GoOnline(pb.GoOnlineRequest(driver_id=unknown, vehicle_id=unknown), timeout=5),
        s.GoOffline(pb.GoOfflineRequest(driver_id=unknown), timeout=5),
        s.AddVehicle(
            pb.AddVehicleRequest(
                driver_id=unknown,
                make="Kia",
                model="Niro",
                plate=plate(),
                seats=4,
                vehicle_class=COMFORT,
            ),
            timeout=5,
        ),
    ):
        assert await grpc_status(call) == grpc.StatusCode.NOT_FOUND
    ok = await s.Authenticate(
        pb.AuthenticateRequest(phone=driver.phone, password=PASSWORD), timeout=5
    )
    assert ok.driver_id == driver.id
    for wrong in (
        pb.AuthenticateRequest(phone=driver.phone, password=PASSWORD + "!"),
        pb.AuthenticateRequest(phone=phone(), password=PASSWORD),
    ):
        assert (
            await grpc_status(s.Authenticate(wrong, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        )


async def test_malformed_ids_enums_and_forged_page_tokens_are_invalid_argument(
    rig: Rig,
) -> None:
    s = rig.stub
    driver = await create(rig.stub)

    def vehicle(driver_id: str, klass: int = COMFORT) -> pb.AddVehicleRequest:
        return pb.AddVehicleRequest(
            driver_id=driver_id,
            make="Kia",
            model="Niro",
            plate=plate(),
            seats=4,
            vehicle_class=common_pb2.VehicleClass.ValueType(klass),
        )

    for bad in [*BAD_IDS, ""]:
        for call in (
            s.GetDriver(pb.GetDriverRequest(driver_id=bad), timeout=5),
            s.GoOnline(pb.GoOnlineRequest(driver_id=bad, vehicle_id="v1"), timeout=5),
            s.GoOffline(pb.GoOfflineRequest(driver_id=bad), timeout=5),
            s.AddVehicle(vehicle(bad), timeout=5),
        ):
            assert (await invalid_argument(call)).startswith("driver_id")
        assert (
            await invalid_argument(
                s.GoOnline(pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=bad), timeout=5)
            )
        ).startswith("vehicle_id")
    for klass in (-5, 0, 42):  # the phantom's class, unspecified, unknown
        await invalid_argument(s.AddVehicle(vehicle(driver.id, klass), timeout=5))
    for token in forged_tokens("driver.online", ["d1"], by_time=False):
        await invalid_argument(
            s.ListOnlineDrivers(pb.ListOnlineDriversRequest(page_token=token), timeout=5)
        )


async def test_going_online_needs_an_own_vehicle(rig: Rig) -> None:
    driver, other = await create(rig.stub), await create(rig.stub)
    others_car = await add_vehicle(rig.stub, other.id)

    without = rig.stub.GoOnline(
        pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=str(uuid.uuid4())), timeout=5
    )
    assert await grpc_status(without) == grpc.StatusCode.FAILED_PRECONDITION
    await add_vehicle(rig.stub, driver.id)
    borrowed = rig.stub.GoOnline(
        pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=others_car.id), timeout=5
    )
    assert await grpc_status(borrowed) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await get(rig.stub, driver.id)).status == pb.DRIVER_STATUS_OFFLINE


async def test_go_online_publishes_driver_online_exactly_once(rig: Rig) -> None:
    driver = await create(rig.stub)
    vehicle = await add_vehicle(rig.stub, driver.id)
    sub = await rig.js.pull_subscribe(
        events.DRIVER_ONLINE,
        stream=events.STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE, inactive_threshold=10.0
        ),
    )
    try:
        online = await rig.stub.GoOnline(
            pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
        )
        again = await rig.stub.GoOnline(  # a no-op: no second event
            pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
        )

        async def outbox_drained() -> bool:
            return not await rig.db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

        await eventually(outbox_drained, timeout_s=10)
        mine: list[bus.Envelope] = []
        async with asyncio.timeout(10):
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    break  # everything the stream had for this consumer was read
                for msg in msgs:
                    envelope = bus.decode_envelope(msg.data)
                    if envelope.aggregate_id == driver.id:
                        mine.append(envelope)
    finally:
        await sub.unsubscribe()

    assert online.status == pb.DRIVER_STATUS_AVAILABLE and online.active_vehicle_id == vehicle.id
    assert again == online
    assert len(mine) == 1
    payload = mine[0].unpack(driver_events.DriverWentOnline)
    assert payload == driver_events.DriverWentOnline(
        driver_id=driver.id,
        vehicle_id=vehicle.id,
        vehicle_class=COMFORT,
        driver_name="Bo",
        vehicle_make="Toyota",
        vehicle_model="Prius",
        vehicle_plate=vehicle.plate,
    )
    assert mine[0].aggregate_version == online_version(
        await rig.db.fetch("SELECT subject, aggregate_version FROM outbox ORDER BY id")
    )


def online_version(rows: list[asyncpg.Record]) -> int:
    return int(next(r["aggregate_version"] for r in rows if r["subject"] == events.DRIVER_ONLINE))


async def test_trip_events_drive_the_status_and_block_going_offline(rig: Rig) -> None:
    driver = await create(rig.stub)
    vehicle = await add_vehicle(rig.stub, driver.id)
    await rig.stub.GoOnline(
        pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
    )
    trip_id = f"trip-{uuid.uuid4().hex[:8]}"
    accepted = await publish_event(
        rig.js,
        events.TRIP_ACCEPTED,
        trip_events.TripAccepted(trip_id=trip_id, rider_id="r", driver_id=driver.id),
        aggregate_id=trip_id,
        version=3,
    )

    async def status_is(status: int) -> bool:
        return (await get(rig.stub, driver.id)).status == status

    await eventually(lambda: status_is(pb.DRIVER_STATUS_ON_TRIP), timeout_s=15)
    on_trip = await get(rig.stub, driver.id)
    offline = rig.stub.GoOffline(pb.GoOfflineRequest(driver_id=driver.id), timeout=5)
    online = rig.stub.GoOnline(
        pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
    )
    assert on_trip.current_trip_id == trip_id
    assert await grpc_status(offline) == grpc.StatusCode.FAILED_PRECONDITION
    assert await grpc_status(online) == grpc.StatusCode.FAILED_PRECONDITION

    await publish_event(
        rig.js,
        events.TRIP_COMPLETED,
        trip_events.TripCompleted(trip_id=trip_id, rider_id="r", driver_id=driver.id),
        aggregate_id=trip_id,
        version=6,
    )
    await eventually(lambda: status_is(pb.DRIVER_STATUS_AVAILABLE), timeout_s=15)
    # The accept again: redelivered (same event id), and as a new event of an older version.
    await publish_event(
        rig.js,
        events.TRIP_ACCEPTED,
        trip_events.TripAccepted(trip_id=trip_id, rider_id="r", driver_id=driver.id),
        aggregate_id=trip_id,
        version=3,
        event_id=accepted.event_id,
        msg_id=f"{accepted.event_id}-redelivered",
    )
    await publish_event(
        rig.js,
        events.TRIP_ACCEPTED,
        trip_events.TripAccepted(trip_id=trip_id, rider_id="r", driver_id=driver.id),
        aggregate_id=trip_id,
        version=3,
    )
    rated = await publish_event(
        rig.js,
        events.TRIP_RATED,
        trip_events.TripRated(
            trip_id=trip_id, rater=trip_pb2.ACTOR_RIDER, ratee_id=driver.id, stars=5
        ),
        aggregate_id=trip_id,
        version=7,
    )
    await publish_event(  # the rating redelivered
        rig.js,
        events.TRIP_RATED,
        trip_events.TripRated(
            trip_id=trip_id, rater=trip_pb2.ACTOR_RIDER, ratee_id=driver.id, stars=5
        ),
        aggregate_id=trip_id,
        version=7,
        event_id=rated.event_id,
        msg_id=f"{rated.event_id}-redelivered",
    )
    other_trip, last_trip = (f"trip-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await publish_event(  # the driver rating a rider: not this driver's rating
        rig.js,
        events.TRIP_RATED,
        trip_events.TripRated(
            trip_id=other_trip, rater=trip_pb2.ACTOR_DRIVER, ratee_id=driver.id, stars=1
        ),
        aggregate_id=other_trip,
        version=7,
    )
    await publish_event(
        rig.js,
        events.TRIP_RATED,
        trip_events.TripRated(
            trip_id=last_trip, rater=trip_pb2.ACTOR_RIDER, ratee_id=driver.id, stars=3
        ),
        aggregate_id=last_trip,
        version=7,
    )

    async def last_rating_seen() -> bool:  # handled in stream order: all above were seen
        query = "SELECT count(*) FROM driver_ratings WHERE trip_id = $1"
        return bool(await rig.db.fetchval(query, last_trip))

    await eventually(last_rating_seen, timeout_s=15)
    after = await get(rig.stub, driver.id)
    assert after.status == pb.DRIVER_STATUS_AVAILABLE and after.current_trip_id == ""
    assert (after.rating_count, after.rating_avg) == (2, 4.0)

    offline_now = await rig.stub.GoOffline(pb.GoOfflineRequest(driver_id=driver.id), timeout=5)
    assert offline_now.status == pb.DRIVER_STATUS_OFFLINE and offline_now.active_vehicle_id == ""
    subjects = [r["subject"] for r in await rig.db.fetch("SELECT subject FROM outbox ORDER BY id")]
    assert subjects[-1] == events.DRIVER_OFFLINE


async def test_online_drivers_are_listed_in_pages_with_their_vehicle_class(rig: Rig) -> None:
    online = []
    for _ in range(3):
        driver = await create(rig.stub)
        vehicle = await add_vehicle(rig.stub, driver.id)
        await rig.stub.GoOnline(
            pb.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
        )
        online.append(driver.id)
    offline = await create(rig.stub)
    await add_vehicle(rig.stub, offline.id)

    listed: list[pb.OnlineDriver] = []
    token = ""
    pages = 0
    while True:
        reply = await rig.stub.ListOnlineDrivers(
            pb.ListOnlineDriversRequest(page_size=2, page_token=token), timeout=5
        )
        listed += reply.drivers
        pages += 1
        token = reply.next_page_token
        if not token:
            break

    assert pages == 2
    assert [d.driver_id for d in listed] == sorted(online)
    assert {d.vehicle_class for d in listed} == {COMFORT}
    bad = pb.ListOnlineDriversRequest(page_token="not-a-token")
    assert await grpc_status(rig.stub.ListOnlineDrivers(bad, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
