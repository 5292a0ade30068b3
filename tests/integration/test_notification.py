"""The notification service against real NATS JetStream and PostgreSQL, through real gRPC.

The stream RIDESHARE is shared by the whole session, so every test makes up its own user and
trip ids and looks only at those; services get a schema and a durable name of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

from notification.app import MIGRATIONS, Service, running
from notification.domain import Channel, Delivery, Notification
from notification.events import EventProcessor, NotificationConsumer
from notification.providers import LogSmsProvider, Provider
from notification.settings import DeliverySettings, NotificationSettings
from notification.store import NotificationStore
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.events import MSG_ID_HEADER
from protos.notification.v1 import notification_pb2 as pb
from protos.notification.v1 import notification_pb2_grpc
from protos.rider.v1 import events_pb2 as rider_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import bus
from rideshare.db import create_pool
from rideshare.migrations import apply_migrations
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually
from tests.integration.hostile import BAD_IDS, forged_token, forged_tokens, invalid_argument

Stub: TypeAlias = "notification_pb2_grpc.NotificationServiceAsyncStub"

EUR_1250 = common_pb2.Money(amount_minor=1250, currency="EUR")
BERLIN = common_pb2.LatLng(lat=52.52, lng=13.405)


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def fast(schema: str, **overrides: object) -> NotificationSettings:
    """Settings for tests: short waits everywhere."""
    base = NotificationSettings(
        schema=schema,
        durable=schema,
        ack_wait_s=5.0,
        fetch_timeout_s=0.2,
        backoff_s=(0.1,),
        delivery=DeliverySettings(retry_base_s=0.05, retry_cap_s=0.2, poll_s=0.05),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def notification_service(
    infra: InfraUrls,
    settings: NotificationSettings,
    *,
    providers: Mapping[Channel, Provider] | None = None,
) -> AsyncIterator[tuple[Service, Stub]]:
    service_settings = ServiceSettings(
        name="notification", infra=infra, grpc_port=0, shutdown_grace_s=1.0
    )
    async with asyncio.timeout(30):
        service_cm = running(service_settings, settings, providers=providers)
        service = await service_cm.__aenter__()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            yield service, notification_pb2_grpc.NotificationServiceStub(channel)
    finally:
        async with asyncio.timeout(30):
            await service_cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def schema_pool(infra: InfraUrls, schema: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncio.timeout(20):
        pool = await create_pool(infra.postgres_dsn, schema=schema, max_size=4)
        await apply_migrations(pool, schema=schema, directory=MIGRATIONS)
    try:
        yield pool
    finally:
        async with asyncio.timeout(10):
            await pool.close()


@dataclass
class Publisher:
    js: JetStreamContext
    nc: NATS
    clock: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def publish(
        self, subject: str, payload: Message, *, aggregate_id: str = "", version: int = 1
    ) -> bus.Envelope:
        # Strictly increasing event times, so "newest first" is the publishing order.
        self.clock += timedelta(milliseconds=1)
        envelope = bus.make_envelope(
            payload,
            type=subject,
            aggregate_id=aggregate_id or new_id("agg"),
            aggregate_version=version,
            occurred_at=self.clock,
        )
        async with asyncio.timeout(5):
            await bus.publish_envelope(self.js, envelope)
        return envelope

    async def publish_raw(self, envelope: bus.Envelope, *, msg_id: str) -> None:
        async with asyncio.timeout(5):
            await self.js.publish(
                envelope.type, bus.encode_envelope(envelope), headers={MSG_ID_HEADER: msg_id}
            )


@pytest.fixture(scope="module")
async def publisher(infra: InfraUrls) -> AsyncIterator[Publisher]:
    async with asyncio.timeout(10):
        nc = await bus.connect(infra.nats_url, name="test-notification-publisher")
    js = nc.jetstream(timeout=5)
    async with asyncio.timeout(10):
        await bus.ensure_stream(js)
    yield Publisher(js=js, nc=nc)
    async with asyncio.timeout(10):
        await nc.close()


@pytest.fixture(scope="module")
async def shared(infra: InfraUrls) -> AsyncIterator[tuple[Service, Stub]]:
    """One service for the tests that need nothing special of it."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    async with notification_service(infra, fast(schema)) as service:
        yield service


@pytest.fixture
def stub(shared: tuple[Service, Stub]) -> Stub:
    return shared[1]


async def kinds_of(stub: Stub, user_id: str) -> list[str]:
    reply = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=user_id, page_size=100), timeout=5
    )
    return sorted(n.kind for n in reply.notifications)


async def notifications_of(stub: Stub, user_id: str) -> list[pb.Notification]:
    reply = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=user_id, page_size=100), timeout=5
    )
    return list(reply.notifications)


async def wait_for_kinds(stub: Stub, user_id: str, count: int) -> list[pb.Notification]:
    async def arrived() -> bool:
        return len(await notifications_of(stub, user_id)) >= count

    await eventually(arrived, timeout_s=20)
    return await notifications_of(stub, user_id)


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, dict(labels or {})) or 0.0


# -- each event type -> the expected notifications -------------------------------------------


@dataclass(frozen=True)
class Ids:
    rider: str = field(default_factory=lambda: new_id("r"))
    driver: str = field(default_factory=lambda: new_id("d"))
    trip: str = field(default_factory=lambda: new_id("t"))


Events = Callable[[Ids], list[tuple[str, Message]]]


def _cancelled(actor: trip_pb2.Actor.ValueType) -> Events:
    return lambda i: [
        (
            events.TRIP_CANCELLED,
            trip_events.TripCancelled(
                trip_id=i.trip, rider_id=i.rider, driver_id=i.driver, cancelled_by=actor
            ),
        )
    ]


def _online(i: Ids) -> tuple[str, Message]:
    return (
        events.DRIVER_ONLINE,
        driver_events.DriverWentOnline(
            driver_id=i.driver,
            vehicle_id="v1",
            vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
            driver_name="Dana",
            vehicle_make="Toyota",
            vehicle_model="Prius",
            vehicle_plate="B-RS-123",
        ),
    )


# (events, expected kinds for the rider, expected kinds for the driver)
CASES: dict[str, tuple[Events, list[str], list[str]]] = {
    "offered": (
        lambda i: [
            (
                events.TRIP_OFFERED,
                trip_events.TripOffered(
                    trip_id=i.trip,
                    offer_id="o1",
                    driver_id=i.driver,
                    rider_id=i.rider,
                    fare=EUR_1250,
                    pickup=BERLIN,
                    distance_to_pickup_m=850,
                ),
            )
        ],
        [],
        ["trip.offer"],
    ),
    "accepted": (
        lambda i: [
            _online(i),
            (
                events.TRIP_ACCEPTED,
                trip_events.TripAccepted(
                    trip_id=i.trip, rider_id=i.rider, driver_id=i.driver, eta_s=240
                ),
            ),
        ],
        ["trip.driver_assigned"],
        [],
    ),
    "arrived": (
        lambda i: [
            (
                events.TRIP_ARRIVED,
                trip_events.TripArrived(trip_id=i.trip, rider_id=i.rider, driver_id=i.driver),
            )
        ],
        ["trip.driver_arrived"],
        [],
    ),
    "started": (
        lambda i: [
            (
                events.TRIP_STARTED,
                trip_events.TripStarted(trip_id=i.trip, rider_id=i.rider, driver_id=i.driver),
            )
        ],
        ["trip.started"],
        [],
    ),
    "completed": (
        lambda i: [
            (
                events.TRIP_COMPLETED,
                trip_events.TripCompleted(
                    trip_id=i.trip,
                    rider_id=i.rider,
                    driver_id=i.driver,
                    fare=EUR_1250,
                    distance_m=5400,
                    duration_s=900,
                ),
            )
        ],
        ["trip.completed"],
        [],
    ),
    "ended_by_service": (
        lambda i: [
            (
                events.TRIP_COMPLETED,
                trip_events.TripCompleted(
                    trip_id=i.trip,
                    rider_id=i.rider,
                    driver_id=i.driver,
                    fare=EUR_1250,
                    completed_by=trip_pb2.ACTOR_SYSTEM,
                    charge_basis=trip_pb2.CHARGE_BASIS_QUOTE,
                    liveness_rule=trip_events.LIVENESS_RULE_RIDE_SILENT,
                    reason="driver silent for 900 s during the ride",
                ),
            )
        ],
        ["trip.ended_by_service"],
        ["trip.ended_by_service"],
    ),
    "driver_replaced": (
        lambda i: [
            (
                events.TRIP_DRIVER_CANCELLED,
                trip_events.TripDriverCancelled(
                    trip_id=i.trip,
                    rider_id=i.rider,
                    driver_id=i.driver,
                    reason="driver silent for 61 s (limit 60 s)",
                    liveness_rule=trip_events.LIVENESS_RULE_DRIVER_SILENT,
                ),
            )
        ],
        ["trip.driver_replaced"],
        ["trip.reassigned"],
    ),
    "no_drivers": (
        lambda i: [
            (events.TRIP_NO_DRIVERS, trip_events.TripNoDrivers(trip_id=i.trip, rider_id=i.rider))
        ],
        ["trip.no_drivers"],
        [],
    ),
    "driver_cancelled": (
        lambda i: [
            (
                events.TRIP_DRIVER_CANCELLED,
                trip_events.TripDriverCancelled(
                    trip_id=i.trip, rider_id=i.rider, driver_id=i.driver, reason="flat tyre"
                ),
            )
        ],
        ["trip.driver_cancelled"],
        [],
    ),
    "cancelled_by_rider": (_cancelled(trip_pb2.ACTOR_RIDER), [], ["trip.rider_cancelled"]),
    "cancelled_by_driver": (_cancelled(trip_pb2.ACTOR_DRIVER), ["trip.cancelled_by_driver"], []),
    "cancelled_by_system": (
        _cancelled(trip_pb2.ACTOR_SYSTEM),
        ["trip.cancelled"],
        ["trip.cancelled"],
    ),
    "rated_by_rider": (
        lambda i: [
            (
                events.TRIP_RATED,
                trip_events.TripRated(
                    trip_id=i.trip,
                    rater=trip_pb2.ACTOR_RIDER,
                    rater_id=i.rider,
                    ratee_id=i.driver,
                    stars=5,
                ),
            )
        ],
        [],
        ["trip.rated"],
    ),
    "rider_created": (
        lambda i: [
            (
                events.RIDER_CREATED,
                rider_events.RiderCreated(rider_id=i.rider, name="Rita", phone="+4915100000"),
            )
        ],
        ["account.welcome"],
        [],
    ),
    "driver_created": (
        lambda i: [
            (
                events.DRIVER_CREATED,
                driver_events.DriverCreated(driver_id=i.driver, name="Dana", phone="+4915100001"),
            )
        ],
        [],
        ["account.welcome"],
    ),
    "silent_events": (
        lambda i: [
            _online(i),
            (events.TRIP_REQUESTED, trip_events.TripRequested(trip_id=i.trip, rider_id=i.rider)),
            (
                events.TRIP_OFFER_ENDED,
                trip_events.TripOfferEnded(trip_id=i.trip, rider_id=i.rider, driver_id=i.driver),
            ),
            (events.DRIVER_OFFLINE, driver_events.DriverWentOffline(driver_id=i.driver)),
            (
                events.DRIVER_VEHICLE_ADDED,
                driver_events.VehicleAdded(driver_id=i.driver, vehicle_id="v2"),
            ),
            (events.RIDER_UPDATED, rider_events.RiderUpdated(rider_id=i.rider, name="R")),
        ],
        [],
        [],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_event_type_notifies_the_right_people(
    case: str, stub: Stub, publisher: Publisher
) -> None:
    make_events, rider_kinds, driver_kinds = CASES[case]
    ids = Ids()
    for subject, payload in make_events(ids):
        await publisher.publish(subject, payload)
    # A marker after the case's events: once it is in, everything before it was handled.
    marker = new_id("marker")
    await publisher.publish(events.RIDER_CREATED, rider_events.RiderCreated(rider_id=marker))
    await wait_for_kinds(stub, marker, 1)

    assert await kinds_of(stub, ids.rider) == rider_kinds
    assert await kinds_of(stub, ids.driver) == driver_kinds


async def test_driver_assigned_names_the_driver_car_plate_and_eta(
    stub: Stub, publisher: Publisher
) -> None:
    ids = Ids()
    for subject, payload in CASES["accepted"][0](ids):
        await publisher.publish(subject, payload, aggregate_id=ids.driver)

    [assigned] = await wait_for_kinds(stub, ids.rider, 1)

    assert assigned.body == "Dana is coming in a Toyota Prius (B-RS-123), about 4 min away."
    assert dict(assigned.data) == {
        "driver_id": ids.driver,
        "driver_name": "Dana",
        "vehicle": "Toyota Prius",
        "plate": "B-RS-123",
        "eta_s": "240",
    }
    assert assigned.trip_id == ids.trip
    assert list(assigned.channels) == [pb.CHANNEL_IN_APP, pb.CHANNEL_PUSH]
    assert not assigned.HasField("read_at")


async def test_trip_completed_tells_the_fare(stub: Stub, publisher: Publisher) -> None:
    ids = Ids()
    for subject, payload in CASES["completed"][0](ids):
        await publisher.publish(subject, payload)

    [completed] = await wait_for_kinds(stub, ids.rider, 1)

    assert completed.body == "You paid 12.50 EUR for 5.4 km in 15 min."
    assert completed.data["fare_minor"] == "1250"


async def test_a_ride_the_service_ended_tells_the_rider_why_and_what_they_paid(
    stub: Stub, publisher: Publisher
) -> None:
    ids = Ids()
    for subject, payload in CASES["ended_by_service"][0](ids):
        await publisher.publish(subject, payload)

    [ended] = await wait_for_kinds(stub, ids.rider, 1)

    assert ended.title == "We ended your trip"
    assert "lost contact with your driver's app" in ended.body
    assert "quoted fare of 12.50 EUR" in ended.body
    assert ended.data["charge_basis"] == "quote"
    assert ended.data["reason"] == "driver silent for 900 s during the ride"


# -- idempotency -----------------------------------------------------------------------------


async def test_a_duplicated_event_yields_one_notification(stub: Stub, publisher: Publisher) -> None:
    ids = Ids()
    envelope = await publisher.publish(
        events.TRIP_NO_DRIVERS, trip_events.TripNoDrivers(trip_id=ids.trip, rider_id=ids.rider)
    )
    # The same event again under another message id: JetStream stores it a second time.
    await publisher.publish_raw(envelope, msg_id=new_id("dup"))
    await publisher.publish_raw(envelope, msg_id=new_id("dup"))
    marker = new_id("marker")
    await publisher.publish(events.RIDER_CREATED, rider_events.RiderCreated(rider_id=marker))
    await wait_for_kinds(stub, marker, 1)

    assert await kinds_of(stub, ids.rider) == ["trip.no_drivers"]


async def test_the_unique_constraint_holds_even_without_the_claim(
    infra: InfraUrls, unique_name: str, publisher: Publisher
) -> None:
    ids = Ids()
    envelope = bus.make_envelope(
        trip_events.TripStarted(trip_id=ids.trip, rider_id=ids.rider, driver_id=ids.driver),
        type=events.TRIP_STARTED,
        aggregate_id=ids.trip,
        aggregate_version=4,
    )
    published: list[Notification] = []

    async def after_commit(created: Sequence[Notification]) -> None:
        published.extend(created)

    async with schema_pool(infra, unique_name) as pool:
        processor = EventProcessor(NotificationStore(pool, consumer="c"), after_commit=after_commit)
        async with asyncio.timeout(10):
            first = await processor.process([envelope, envelope])  # twice in one batch
            await pool.execute("DELETE FROM processed_events")  # as if the claim were gone
            second = await processor.process([envelope])
            count = await pool.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1", ids.rider
            )

    assert [n.kind for n in first] == ["trip.started"]
    assert second == []
    assert count == 1
    assert published == first  # pushed live once


# -- crash between commit and ack -------------------------------------------------------------


async def test_a_copy_that_dies_after_commit_before_ack_loses_and_duplicates_nothing(
    infra: InfraUrls, unique_name: str, publisher: Publisher
) -> None:
    settings = fast(unique_name, ack_wait_s=1.0)
    riders = [new_id("r") for _ in range(5)]
    committed = asyncio.Event()

    async def die_before_ack(created: Sequence[Notification]) -> None:
        if any(n.user_id in riders for n in created):
            committed.set()
            await asyncio.Event().wait()  # hangs until the "crash" cancels it

    async with schema_pool(infra, unique_name) as pool:
        copy_a = NotificationConsumer(
            publisher.js,
            EventProcessor(
                NotificationStore(pool, consumer=settings.durable), after_commit=die_before_ack
            ),
            durable=settings.durable,
            ack_wait_s=settings.ack_wait_s,
            fetch_timeout_s=settings.fetch_timeout_s,
            backoff_s=settings.backoff_s,
        )
        task = asyncio.create_task(copy_a.run(asyncio.Event()))
        for rider in riders:
            await publisher.publish(
                events.TRIP_NO_DRIVERS,
                trip_events.TripNoDrivers(trip_id=new_id("t"), rider_id=rider),
            )
        async with asyncio.timeout(20):
            await committed.wait()
        task.cancel()  # the crash: committed, never acked
        with contextlib.suppress(asyncio.CancelledError):
            await task
        before = await pool.fetchval(
            "SELECT count(*) FROM notifications WHERE user_id = ANY($1)", riders
        )
        assert before >= 1  # copy A's effect is in

        duplicates_before = sample("notification_events_processed_total", {"result": "duplicate"})
        async with notification_service(infra, settings) as (_service, stub):

            async def all_in() -> bool:
                return [await kinds_of(stub, r) for r in riders] == [["trip.no_drivers"]] * 5

            await eventually(all_in, timeout_s=20)
            info = await publisher.js.consumer_info(events.STREAM, settings.durable)

            async def drained() -> bool:
                nonlocal info
                info = await publisher.js.consumer_info(events.STREAM, settings.durable)
                return bool(info.num_ack_pending == 0 and info.num_pending == 0)

            await eventually(drained, timeout_s=20)

        rows = await pool.fetch(
            "SELECT user_id, count(*) AS n FROM notifications WHERE user_id = ANY($1) "
            "GROUP BY user_id",
            riders,
        )

    assert {row["user_id"]: row["n"] for row in rows} == dict.fromkeys(riders, 1)
    # Copy B was handed copy A's un-acked events again and skipped them by their claims.
    assert (
        sample("notification_events_processed_total", {"result": "duplicate"})
        >= duplicates_before + before
    )


# -- poison messages -------------------------------------------------------------------------


async def test_a_poison_event_is_dead_lettered_after_the_bound_and_blocks_nothing(
    infra: InfraUrls, unique_name: str, publisher: Publisher
) -> None:
    settings = fast(unique_name, max_deliver=2)
    deadletter = bus.deadletter_subject(settings.durable)
    js = publisher.js
    dead_before = sample("notification_events_deadlettered_total")
    async with notification_service(infra, settings) as (service, stub):
        poison = bus.Envelope(
            event_id=new_id("poison"),
            occurred_at=datetime.now(UTC),
            aggregate_id=new_id("t"),
            aggregate_version=1,
            type=events.TRIP_COMPLETED,
            payload=b"\xff\xff\xff",  # not a TripCompleted
        )
        await publisher.publish_raw(poison, msg_id=poison.event_id)
        rider = new_id("r")
        await publisher.publish(
            events.TRIP_NO_DRIVERS,
            trip_events.TripNoDrivers(trip_id=new_id("t"), rider_id=rider),
        )

        await wait_for_kinds(stub, rider, 1)  # the next event went past the poison

        async def dead_lettered() -> bool:
            info = await js.stream_info(events.STREAM, subjects_filter=deadletter)
            return sum((info.state.subjects or {}).values()) >= 1

        await eventually(dead_lettered, timeout_s=20)
        sub = await js.pull_subscribe(
            deadletter,
            stream=events.STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=5.0),
        )
        try:
            async with asyncio.timeout(10):
                [dead] = await sub.fetch(1, timeout=5)
        finally:
            await sub.unsubscribe()

    assert bus.decode_envelope(dead.data).event_id == poison.event_id
    assert dead.headers is not None
    assert dead.headers[bus.DEADLETTER_DELIVERIES_HEADER] == "2"
    assert dead.headers[bus.DEADLETTER_SUBJECT_HEADER] == events.TRIP_COMPLETED
    assert "EnvelopeError" in dead.headers[bus.DEADLETTER_ERROR_HEADER]
    assert sample("notification_events_deadlettered_total") >= dead_before + 1
    assert service.consumer.stats.deadlettered >= 1


# -- several copies --------------------------------------------------------------------------


async def test_two_copies_share_the_stream_without_double_delivery(
    infra: InfraUrls, unique_name: str, publisher: Publisher
) -> None:
    settings = fast(unique_name, batch=10)
    riders = [new_id("r") for _ in range(300)]
    wanted = set(riders)
    # Pushes by notification id: other services in this session (with durables of their
    # own) notify the same users under other ids.
    pushed: Counter[str] = Counter()

    async def on_push(msg: Msg) -> None:
        notification = pb.Notification.FromString(msg.data)
        if notification.user_id in wanted:
            pushed[notification.id] += 1

    sub = await publisher.nc.subscribe(events.NOTIFY_USER_WILDCARD, cb=on_push)
    try:
        async with (
            notification_service(infra, settings) as (copy_a, _stub),
            notification_service(infra, settings) as (copy_b, _),
            schema_pool(infra, unique_name) as pool,
        ):

            async def caught_up() -> bool:
                info = await publisher.js.consumer_info(events.STREAM, settings.durable)
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            await eventually(caught_up, timeout_s=20)  # the session's earlier events
            acked_before = copy_a.consumer.stats.acked, copy_b.consumer.stats.acked
            for rider in riders:
                await publisher.publish(
                    events.TRIP_NO_DRIVERS,
                    trip_events.TripNoDrivers(trip_id=new_id("t"), rider_id=rider),
                )

            async def all_stored() -> bool:
                count = await pool.fetchval(
                    "SELECT count(*) FROM notifications WHERE user_id = ANY($1)", riders
                )
                return bool(count == len(riders))

            await eventually(all_stored, timeout_s=30)
            await eventually(caught_up, timeout_s=20)
            ours = {
                str(row["id"])
                for row in await pool.fetch(
                    "SELECT id FROM notifications WHERE user_id = ANY($1)", riders
                )
            }

            async def all_pushed() -> bool:
                return ours <= set(pushed)

            await eventually(all_pushed, timeout_s=10)
            acked_a = copy_a.consumer.stats.acked - acked_before[0]
            acked_b = copy_b.consumer.stats.acked - acked_before[1]
    finally:
        await sub.unsubscribe()

    assert len(ours) == len(riders)  # one notification per event
    assert {pushed[i] for i in ours} == {1}  # pushed live once
    assert acked_a + acked_b == len(riders)  # every event acked by exactly one copy
    assert acked_a > 0 and acked_b > 0


# -- ListNotifications, MarkRead, Subscribe --------------------------------------------------


async def test_list_pages_newest_first_and_mark_read_changes_only_own_unread(
    stub: Stub, publisher: Publisher
) -> None:
    rider, other = new_id("r"), new_id("r")
    trips = [new_id("t") for _ in range(7)]
    for trip in trips:
        await publisher.publish(
            events.TRIP_STARTED, trip_events.TripStarted(trip_id=trip, rider_id=rider)
        )
    await publisher.publish(
        events.TRIP_STARTED, trip_events.TripStarted(trip_id="x", rider_id=other)
    )
    await wait_for_kinds(stub, rider, 7)
    [others] = await wait_for_kinds(stub, other, 1)

    pages: list[list[str]] = []
    token = ""
    while True:
        reply = await stub.ListNotifications(
            pb.ListNotificationsRequest(user_id=rider, page_size=3, page_token=token), timeout=5
        )
        pages.append([n.trip_id for n in reply.notifications])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [trips[6:3:-1], trips[3:0:-1], trips[0:1]]

    newest = await notifications_of(stub, rider)
    marked = await stub.MarkRead(
        pb.MarkReadRequest(
            user_id=rider,
            notification_ids=[newest[0].id, newest[1].id, others.id, str(uuid.uuid4()), "junk"],
        ),
        timeout=5,
    )
    again = await stub.MarkRead(
        pb.MarkReadRequest(user_id=rider, notification_ids=[newest[0].id]), timeout=5
    )
    unread = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=rider, unread_only=True), timeout=5
    )
    [other_after] = await notifications_of(stub, other)

    assert marked.updated == 2
    assert again.updated == 0
    assert [n.trip_id for n in unread.notifications] == trips[4::-1]
    assert not other_after.HasField("read_at")
    [first_read] = [n for n in await notifications_of(stub, rider) if n.id == newest[0].id]
    assert first_read.HasField("read_at")


async def test_list_rejects_bad_arguments(stub: Stub, publisher: Publisher) -> None:
    rider = new_id("r")
    for _ in range(2):
        await publisher.publish(
            events.TRIP_STARTED, trip_events.TripStarted(trip_id=new_id("t"), rider_id=rider)
        )
    await wait_for_kinds(stub, rider, 2)
    first = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=rider, page_size=1), timeout=5
    )
    bad_requests = [
        pb.ListNotificationsRequest(user_id=""),
        pb.ListNotificationsRequest(user_id=rider, page_size=-1),
        pb.ListNotificationsRequest(user_id=rider, page_token="not-a-token"),
        # A token is only good for the same user and filter.
        pb.ListNotificationsRequest(user_id=new_id("r"), page_token=first.next_page_token),
        pb.ListNotificationsRequest(
            user_id=rider, unread_only=True, page_token=first.next_page_token
        ),
    ]
    for request in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListNotifications(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request


async def test_every_forged_page_token_and_malformed_user_id_is_invalid_argument(
    stub: Stub, publisher: Publisher
) -> None:
    rider = new_id("r")
    for _ in range(2):
        await publisher.publish(
            events.TRIP_STARTED, trip_events.TripStarted(trip_id=new_id("t"), rider_id=rider)
        )
    await wait_for_kinds(stub, rider, 2)
    real = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=rider, page_size=1), timeout=5
    )
    assert real.next_page_token  # the forged ones below are refused, not all tokens
    key: list[object] = ["2026-01-01T00:00:00+00:00", str(uuid.uuid4())]
    forged = [
        *forged_tokens(f"notification.list:{rider}:all", key, by_time=True),
        # well formed, but the position's id cannot be a notification's
        forged_token({"v": 1, "s": f"notification.list:{rider}:all", "k": [key[0], "t1"]}),
    ]
    for token in forged:
        await invalid_argument(
            stub.ListNotifications(
                pb.ListNotificationsRequest(user_id=rider, page_token=token), timeout=5
            )
        )
    for bad in BAD_IDS:
        for call in (
            stub.ListNotifications(pb.ListNotificationsRequest(user_id=bad), timeout=5),
            stub.MarkRead(pb.MarkReadRequest(user_id=bad, notification_ids=[]), timeout=5),
        ):
            assert (await invalid_argument(call)).startswith("user_id")
        subscribed = stub.Subscribe(pb.SubscribeRequest(user_id=bad), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subscribed.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_subscribe_streams_a_new_in_app_notification(
    stub: Stub, publisher: Publisher
) -> None:
    rider = new_id("r")
    call = stub.Subscribe(pb.SubscribeRequest(user_id=rider), timeout=20)
    try:
        await call.initial_metadata()  # listening from here on
        await publisher.publish(
            events.RIDER_CREATED, rider_events.RiderCreated(rider_id=rider, name="Rita")
        )
        async with asyncio.timeout(10):
            live = await call.read()
    finally:
        call.cancel()

    assert isinstance(live, pb.Notification)
    assert (live.user_id, live.kind, live.body) == (
        rider,
        "account.welcome",
        "Hi Rita, you are ready to ride.",
    )
    [stored] = await notifications_of(stub, rider)
    assert stored.id == live.id


async def test_subscribe_without_a_user_is_invalid(stub: Stub) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(user_id=""), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- push and SMS ----------------------------------------------------------------------------


class FlakyPush:
    """A push gateway that fails the first ``failures`` attempts of each delivery to
    ``users``."""

    name = "flaky"
    channel = Channel.PUSH

    def __init__(self, users: set[str], failures: int) -> None:
        self.users = users
        self.failures = failures
        self.calls: Counter[str] = Counter()

    async def send(self, delivery: Delivery) -> str:
        if delivery.user_id in self.users:
            self.calls[delivery.user_id] += 1
            if delivery.attempt <= self.failures:
                raise ConnectionError("gateway unavailable")
        return f"device-of-{delivery.user_id}"


async def test_failed_push_is_retried_with_backoff_and_every_attempt_is_stored(
    infra: InfraUrls, unique_name: str, publisher: Publisher
) -> None:
    with_phone, without_phone = new_id("r"), new_id("r")
    push = FlakyPush({with_phone, without_phone}, failures=2)
    providers: dict[Channel, Provider] = {Channel.PUSH: push, Channel.SMS: LogSmsProvider()}
    async with (
        notification_service(infra, fast(unique_name), providers=providers) as (_, stub),
        schema_pool(infra, unique_name) as pool,
    ):
        await publisher.publish(
            events.RIDER_CREATED,
            rider_events.RiderCreated(rider_id=with_phone, name="Rita", phone="+4915100002"),
            aggregate_id=with_phone,
        )
        for rider in (with_phone, without_phone):
            await publisher.publish(
                events.TRIP_ARRIVED,
                trip_events.TripArrived(trip_id=new_id("t"), rider_id=rider, driver_id="d"),
            )

        async def settled() -> bool:
            pending = await pool.fetchval(
                "SELECT count(*) FROM deliveries d JOIN notifications n "
                "ON n.id = d.notification_id WHERE n.user_id = ANY($1) AND d.status = 'pending'",
                [with_phone, without_phone],
            )
            done = await pool.fetchval(
                "SELECT count(*) FROM deliveries d JOIN notifications n "
                "ON n.id = d.notification_id WHERE n.user_id = ANY($1)",
                [with_phone, without_phone],
            )
            return bool(pending == 0 and done == 4)

        await eventually(settled, timeout_s=20)
        rows = await pool.fetch(
            "SELECT n.user_id, d.channel, d.status, a.attempt, a.ok, a.provider, a.destination "
            "FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "JOIN notifications n ON n.id = d.notification_id "
            "WHERE n.user_id = ANY($1) ORDER BY n.user_id, d.channel, a.attempt",
            [with_phone, without_phone],
        )
        kinds_with_phone = await kinds_of(stub, with_phone)

    history = [tuple(row.values()) for row in rows if row["user_id"] == with_phone]
    sms_without = [
        tuple(row.values())[1:5]
        for row in rows
        if row["user_id"] == without_phone and row["channel"] == "sms"
    ]
    push_attempts = [(row["user_id"], row["ok"]) for row in rows if row["channel"] == "push"]
    assert ("sms", "sent", 1, True) in [h[1:5] for h in history]
    assert ("log", "+4915100002") in [h[5:] for h in history if h[1] == "sms"]
    # Each push failed twice, was retried and got through on the third attempt.
    assert push_attempts == sorted([(u, ok) for u in push.users for ok in (False, False, True)])
    assert {row["status"] for row in rows if row["channel"] == "push"} == {"sent"}
    assert sms_without == [("sms", "failed", 1, False)]  # no phone: no point retrying
    assert kinds_with_phone == ["account.welcome", "trip.driver_arrived"]
    assert push.calls == dict.fromkeys(push.users, 3)
