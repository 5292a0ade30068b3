"""The location service against real Redis and NATS, through real gRPC channels.

Every test runs twice: on one Valkey (its own database) and on the session's six-node Valkey
Cluster (emptied first), with the keys spread over ``CLUSTER_SHARDS`` shards."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

import grpc
import pytest

from location.app import running
from location.domain import Availability, SnapshotEntry
from location.settings import LocationSettings
from location.store import LocationStore, shard_of, shard_prefix
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.location.v1 import location_pb2 as pb
from protos.location.v1 import location_pb2_grpc
from rideshare import bus
from rideshare.redis_client import is_cluster_url, open_redis
from rideshare.settings import InfraUrls, ServiceSettings
from rideshare.valkey_cluster import ValkeyCluster
from tests.helpers import eventually, operator_channel
from tests.integration.hostile import BAD_IDS, invalid_argument

BERLIN = (52.5200, 13.4050)
CLUSTER_SHARDS = 4
STANDARD = common_pb2.VEHICLE_CLASS_STANDARD

# The stub's async flavour exists only for type checkers (mypy-protobuf).
Stub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return f"d-{uuid.uuid4().hex[:12]}"


def update(driver_id: str, lat: float, lng: float, ts: int | None = None) -> pb.PositionUpdate:
    return pb.PositionUpdate(
        driver_id=driver_id,
        lat=lat,
        lng=lng,
        heading=90.0,
        speed_mps=8.0,
        accuracy_m=5.0,
        client_ts_ms=ts if ts is not None else now_ms(),
    )


def shards_for(redis_url: str) -> int:
    return CLUSTER_SHARDS if is_cluster_url(redis_url) else 1


@pytest.fixture(params=["one", "cluster"])
def valkey(request: pytest.FixtureRequest) -> ValkeyCluster | None:
    """None for the session's one Valkey; the Valkey Cluster, started on first use."""
    if request.param == "one":
        return None
    cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
    return cluster


@pytest.fixture
async def redis_url(valkey: ValkeyCluster | None, redis_url: str) -> AsyncIterator[str]:
    """The session's Valkey (a database of its own), or its Valkey Cluster, emptied."""
    if valkey is None:
        yield redis_url
        return
    cluster = valkey
    client = open_redis(cluster.url(), timeout_s=10)
    try:
        await client.flushdb()  # on every master
    finally:
        await client.aclose()
    yield cluster.url()


@contextlib.asynccontextmanager
async def location_server(
    infra: InfraUrls, redis_url: str, **overrides: float
) -> AsyncIterator[str]:
    """A location service on a free port of its own; its address."""
    settings = ServiceSettings(
        name="location",
        infra=InfraUrls(
            redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url
        ),
        grpc_port=0,
        shutdown_grace_s=1.0,
    )
    location = LocationSettings(
        consumer_name=f"location-{uuid.uuid4().hex[:8]}",
        driver_addr="",  # no driver or trip service here: no rebuild
        trip_addr="",
        **{"shards": shards_for(redis_url), **overrides},  # type: ignore[arg-type]
    )
    async with running(settings, location) as server:
        yield f"127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def location_service(
    infra: InfraUrls, redis_url: str, **overrides: float
) -> AsyncIterator[Stub]:
    async with location_server(infra, redis_url, **overrides) as target:
        async with operator_channel(target) as channel:
            yield location_pb2_grpc.LocationServiceStub(channel)


@pytest.fixture
async def stub(infra: InfraUrls, redis_url: str) -> AsyncIterator[Stub]:
    async with location_service(infra, redis_url) as stub:
        yield stub


@contextlib.asynccontextmanager
async def index_of(redis_url: str) -> AsyncIterator[LocationStore]:
    """The service's Redis adapter on the same database: writes what an event would."""
    client = open_redis(redis_url, timeout_s=10)
    try:
        yield LocationStore(client, shards=shards_for(redis_url))
    finally:
        await client.aclose()


@pytest.fixture
async def index(redis_url: str) -> AsyncIterator[LocationStore]:
    async with index_of(redis_url) as store:
        yield store


async def go_online(
    index: LocationStore, stub: Stub, driver_id: str, lat: float, lng: float, klass: int = STANDARD
) -> None:
    """What driver.online does, then a position."""
    await index.driver_online(driver_id, klass, at_ms=now_ms())
    await stub.ReportPosition(update(driver_id, lat, lng), timeout=5)


async def nearest_ids(stub: Stub, lat: float, lng: float, radius_m: float = 2_000) -> list[str]:
    reply = await stub.NearestDrivers(
        pb.NearestDriversRequest(lat=lat, lng=lng, radius_m=radius_m, limit=10), timeout=5
    )
    return [d.driver_id for d in reply.drivers]


async def test_reported_available_driver_is_found_nearest_first(
    stub: Stub, index: LocationStore
) -> None:
    near, far, busy, outside = new_id(), new_id(), new_id(), new_id()
    await go_online(index, stub, near, BERLIN[0] + 0.001, BERLIN[1])
    await go_online(index, stub, far, BERLIN[0] + 0.010, BERLIN[1])
    await go_online(index, stub, busy, BERLIN[0], BERLIN[1] + 0.001)
    await go_online(index, stub, outside, BERLIN[0] + 0.5, BERLIN[1])
    await stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=busy, trip_id="t1"), timeout=5)

    reply = await stub.NearestDrivers(
        pb.NearestDriversRequest(lat=BERLIN[0], lng=BERLIN[1], radius_m=2_000, limit=10),
        timeout=5,
    )

    assert [d.driver_id for d in reply.drivers] == [near, far]
    first = reply.drivers[0]
    assert 100 < first.distance_m < 125  # 0.001 degrees of latitude is ~111 m
    assert first.heading == 90.0
    assert first.vehicle_class == STANDARD
    assert 0 <= first.position_age_ms < 5_000


async def test_search_filters_by_class_and_excluded_drivers(
    stub: Stub, index: LocationStore
) -> None:
    standard, xl, declined = new_id(), new_id(), new_id()
    for driver_id, vehicle_class in (
        (standard, STANDARD),
        (xl, common_pb2.VEHICLE_CLASS_XL),
        (declined, STANDARD),
    ):
        await go_online(index, stub, driver_id, *BERLIN, klass=vehicle_class)

    reply = await stub.NearestDrivers(
        pb.NearestDriversRequest(
            lat=BERLIN[0],
            lng=BERLIN[1],
            radius_m=1_000,
            vehicle_class=STANDARD,
            exclude_driver_ids=[declined],
        ),
        timeout=5,
    )

    assert [d.driver_id for d in reply.drivers] == [standard]


async def test_older_update_is_dropped_not_applied(stub: Stub) -> None:
    driver = new_id()
    ts = now_ms()
    first = await stub.ReportPosition(update(driver, 52.50, 13.40, ts), timeout=5)
    late = await stub.ReportPosition(update(driver, 52.60, 13.50, ts - 1_000), timeout=5)

    stored = await stub.GetPosition(pb.GetPositionRequest(driver_id=driver), timeout=5)

    assert first.accepted
    assert not late.accepted
    assert late.reason == pb.REJECT_REASON_OUT_OF_ORDER
    assert (stored.lat, stored.client_ts_ms) == (52.50, ts)


async def test_stream_rejects_bad_items_one_by_one_and_applies_the_rest(stub: Stub) -> None:
    a, b = new_id(), new_id()
    ts = now_ms()
    items = [
        update(a, 52.5, 13.4, ts),
        update(b, 91.0, 13.4, ts),  # bad latitude
        update(b, 52.5, 13.4, ts),
        update(a, 52.5, 13.4, ts - 5),  # older than the first
        pb.PositionUpdate(driver_id=b, lat=52.5, lng=13.4, heading=400, client_ts_ms=ts + 1),
        update("", 52.5, 13.4, ts),
    ]

    async def requests() -> AsyncIterator[pb.PositionBatch]:
        yield pb.PositionBatch(updates=items[:3])
        yield pb.PositionBatch(updates=items[3:])

    summary = await stub.ReportPositions(requests(), timeout=10)

    assert (summary.accepted, summary.rejected) == (2, 4)
    reasons = {r.index: r.reason for r in summary.rejections}
    assert reasons == {
        1: pb.REJECT_REASON_INVALID_COORDINATES,
        3: pb.REJECT_REASON_OUT_OF_ORDER,
        4: pb.REJECT_REASON_INVALID_HEADING,
        5: pb.REJECT_REASON_MISSING_DRIVER_ID,
    }


async def test_a_backlog_of_one_drivers_updates_stores_only_the_newest(stub: Stub) -> None:
    """Latest-wins ingest: the updates of one driver that wait together for a write collapse
    into the newest (counted as superseded); a late older one is out of order."""
    driver, other = new_id(), new_id()
    ts = now_ms() - 10_000
    backlog = [update(driver, 52.5 + i * 0.001, 13.4, ts + i * 100) for i in range(10)]
    batch = [*backlog[:5], update(other, 52.4, 13.3, ts), *backlog[5:], backlog[2]]

    async def requests() -> AsyncIterator[pb.PositionBatch]:
        yield pb.PositionBatch(updates=batch)

    summary = await stub.ReportPositions(requests(), timeout=10)
    stored = await stub.GetPosition(pb.GetPositionRequest(driver_id=driver), timeout=5)

    assert (summary.accepted, summary.superseded, summary.rejected) == (2, 9, 1)
    assert [(r.index, r.reason) for r in summary.rejections] == [
        (len(batch) - 1, pb.REJECT_REASON_OUT_OF_ORDER)
    ]
    assert (stored.lat, stored.client_ts_ms) == (backlog[-1].lat, backlog[-1].client_ts_ms)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda s: s.ReportPosition(update("d", 91.0, 0.0), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ReportPosition(update("d", 0.0, 0.0, now_ms() + 3_600_000), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ReportPosition(update("d", float("nan"), 0.0), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.NearestDrivers(
                pb.NearestDriversRequest(lat=0, lng=0, radius_m=0), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.NearestDrivers(
                pb.NearestDriversRequest(lat=0, lng=0, radius_m=10, limit=-1), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.GetPosition(pb.GetPositionRequest(driver_id="nobody"), timeout=5),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda s: s.ReserveDriver(pb.ReserveDriverRequest(driver_id="d"), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.DriversInArea(
                pb.DriversInAreaRequest(min_lat=10, max_lat=5, min_lng=0, max_lng=1), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=[
        "lat-out-of-range",
        "timestamp-in-the-future",
        "nan",
        "zero-radius",
        "negative-limit",
        "unknown-driver",
        "reserve-without-trip",
        "inverted-box",
    ],
)
async def test_bad_input_gets_a_clear_status(
    stub: Stub, call: Callable[[Stub], Awaitable[object]], expected: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub)
    assert caught.value.code() == expected
    assert caught.value.details()


async def test_ids_that_are_no_subject_token_or_key_part_are_invalid_argument(stub: Stub) -> None:
    for bad in [*BAD_IDS, ""]:
        calls: list[tuple[str, Awaitable[object]]] = [
            ("driver_id", stub.ReportPosition(update(bad, 52.5, 13.4), timeout=5)),
            ("driver_id", stub.GetPosition(pb.GetPositionRequest(driver_id=bad), timeout=5)),
            (
                "driver_id",
                stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=bad, trip_id="t1"), timeout=5),
            ),
            (
                "trip_id",
                stub.ReleaseDriver(pb.ReleaseDriverRequest(driver_id="d1", trip_id=bad), timeout=5),
            ),
            (
                "exclude_driver_ids",
                stub.NearestDrivers(
                    pb.NearestDriversRequest(
                        lat=52.5, lng=13.4, radius_m=1000, exclude_driver_ids=["d1", bad]
                    ),
                    timeout=5,
                ),
            ),
        ]
        for field_name, call in calls:
            assert (await invalid_argument(call)).startswith(field_name), (bad, field_name)
        watch = stub.WatchDriver(pb.WatchDriverRequest(driver_id=bad), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # On the stream a bad id rejects its update alone, as every other bad field does.
    async def batches() -> AsyncIterator[pb.PositionBatch]:
        yield pb.PositionBatch(updates=[update(bad, 52.5, 13.4) for bad in BAD_IDS])

    summary = await stub.ReportPositions(batches(), timeout=10)
    assert (summary.accepted, summary.rejected) == (0, len(BAD_IDS))
    assert {r.reason for r in summary.rejections} == {pb.REJECT_REASON_MISSING_DRIVER_ID}


@pytest.mark.parametrize("value", [0, -5, 42])
async def test_a_search_for_an_unspecified_or_unknown_class_is_invalid_argument(
    stub: Stub, value: int
) -> None:
    request = pb.NearestDriversRequest(
        lat=52.5, lng=13.4, radius_m=1000, vehicle_class=common_pb2.VehicleClass.ValueType(value)
    )
    assert "vehicle_class" in await invalid_argument(stub.NearestDrivers(request, timeout=5))


async def test_reserve_holds_a_driver_for_one_trip_once(stub: Stub, index: LocationStore) -> None:
    driver = new_id()
    await go_online(index, stub, driver, *BERLIN)

    results = await asyncio.gather(
        *(
            stub.ReserveDriver(
                pb.ReserveDriverRequest(driver_id=driver, trip_id=f"t{i}"), timeout=5
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )

    won = [i for i, r in enumerate(results) if isinstance(r, pb.ReserveDriverResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 9
    assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert await nearest_ids(stub, *BERLIN) == []
    # Only the holding trip releases the driver; repeating it changes nothing.
    other = pb.ReleaseDriverRequest(driver_id=driver, trip_id=f"t{(won[0] + 1) % 10}")
    assert not (await stub.ReleaseDriver(other, timeout=5)).released
    assert await nearest_ids(stub, *BERLIN) == []
    mine = pb.ReleaseDriverRequest(driver_id=driver, trip_id=f"t{won[0]}")
    assert (await stub.ReleaseDriver(mine, timeout=5)).released
    assert not (await stub.ReleaseDriver(mine, timeout=5)).released
    assert await nearest_ids(stub, *BERLIN) == [driver]


async def test_offline_driver_leaves_search_at_once_and_returns_when_available(
    stub: Stub, index: LocationStore
) -> None:
    driver = new_id()
    await go_online(index, stub, driver, *BERLIN)
    assert await nearest_ids(stub, *BERLIN) == [driver]

    await index.driver_offline(driver, at_ms=now_ms())
    assert await nearest_ids(stub, *BERLIN) == []

    await index.driver_online(driver, STANDARD, at_ms=now_ms())
    assert await nearest_ids(stub, *BERLIN) == [driver]


async def test_driver_not_heard_from_drops_out_of_search_and_index(
    infra: InfraUrls, redis_url: str
) -> None:
    driver = new_id()
    async with (
        location_service(infra, redis_url, stale_s=0.5, sweep_interval_s=0.1) as stub,
        index_of(redis_url) as index,
    ):
        await go_online(index, stub, driver, *BERLIN)
        assert await nearest_ids(stub, *BERLIN) == [driver]

        async def gone_from_search() -> bool:
            return await nearest_ids(stub, *BERLIN) == []

        await eventually(gone_from_search, timeout_s=5)

        client = open_redis(redis_url, timeout_s=10)
        all_key = shard_prefix("loc:", shard_of(driver, shards_for(redis_url))) + "geo:all"
        try:

            async def swept() -> bool:
                return await client.zscore(all_key, driver) is None

            await eventually(swept, timeout_s=5)
        finally:
            await client.aclose()
        position = await stub.GetPosition(pb.GetPositionRequest(driver_id=driver), timeout=5)
        assert position.driver_id == driver  # last known position is kept


async def test_drivers_in_area_shows_online_drivers_of_any_availability(
    stub: Stub, index: LocationStore
) -> None:
    available, offered, offline = new_id(), new_id(), new_id()
    for driver in (available, offered, offline):
        await go_online(index, stub, driver, BERLIN[0] + 0.001, BERLIN[1] + 0.001)
    await stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=offered, trip_id="t1"), timeout=5)
    await index.driver_offline(offline, at_ms=now_ms())

    box = pb.DriversInAreaRequest(min_lat=52.5, min_lng=13.4, max_lat=52.53, max_lng=13.42)
    reply = await stub.DriversInArea(box, timeout=5)
    limited = await stub.DriversInArea(
        pb.DriversInAreaRequest(min_lat=52.5, min_lng=13.4, max_lat=52.53, max_lng=13.42, limit=1),
        timeout=5,
    )

    assert {d.driver_id: d.availability for d in reply.drivers} == {
        available: pb.AVAILABILITY_AVAILABLE,
        offered: pb.AVAILABILITY_OFFERED,
    }
    assert not reply.truncated
    assert len(limited.drivers) == 1
    assert limited.truncated


async def test_watcher_on_one_copy_sees_updates_reported_to_another(
    infra: InfraUrls, redis_url: str
) -> None:
    driver = new_id()
    ts = now_ms()
    async with (
        location_service(infra, redis_url) as copy_a,
        location_service(infra, redis_url) as copy_b,
    ):
        await copy_a.ReportPosition(update(driver, 52.50, 13.40, ts), timeout=5)
        watch = copy_b.WatchDriver(pb.WatchDriverRequest(driver_id=driver), timeout=30)
        received: list[pb.DriverPosition] = []
        async with asyncio.timeout(10):
            snapshot = await watch.read()
            assert isinstance(snapshot, pb.DriverPosition)
            received.append(snapshot)
            for step in range(1, 4):
                await copy_a.ReportPosition(
                    update(driver, 52.50 + step / 1000, 13.40, ts + step), timeout=5
                )
                message = await watch.read()
                assert isinstance(message, pb.DriverPosition)
                received.append(message)
        watch.cancel()

    assert [m.client_ts_ms for m in received] == [ts, ts + 1, ts + 2, ts + 3]
    assert received[-1].lat == pytest.approx(52.503)


async def test_driver_online_event_makes_the_driver_searchable(
    infra: InfraUrls, redis_url: str, stub: Stub
) -> None:
    driver = new_id()
    await stub.ReportPosition(update(driver, *BERLIN), timeout=5)
    assert await nearest_ids(stub, *BERLIN) == []  # never went online

    nc = await bus.connect(infra.nats_url, name="test")
    try:
        js = nc.jetstream()
        online = bus.make_envelope(
            driver_events.DriverWentOnline(driver_id=driver, vehicle_class=STANDARD),
            type=events.DRIVER_ONLINE,
            aggregate_id=driver,
            aggregate_version=1,
        )
        await bus.publish_envelope(js, online)

        async def searchable() -> bool:
            return await nearest_ids(stub, *BERLIN) == [driver]

        await eventually(searchable)

        # A redelivered copy of an old event changes nothing after the driver went offline.
        offline = bus.make_envelope(
            driver_events.DriverWentOffline(driver_id=driver),
            type=events.DRIVER_OFFLINE,
            aggregate_id=driver,
            aggregate_version=2,
        )
        await bus.publish_envelope(js, offline)

        async def unsearchable() -> bool:
            return await nearest_ids(stub, *BERLIN) == []

        await eventually(unsearchable)
        await bus.publish_envelope(js, online, subject=events.DRIVER_ONLINE)
        await asyncio.sleep(0.5)  # give a wrong re-application the chance to show
        assert await nearest_ids(stub, *BERLIN) == []
    finally:
        await nc.drain()


async def test_event_claims_are_kept_under_the_configured_consumer_name(
    infra: InfraUrls, redis_url: str, index: LocationStore
) -> None:
    settings = ServiceSettings(
        name="location",
        infra=InfraUrls(
            redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url
        ),
        grpc_port=0,
        shutdown_grace_s=1.0,
    )
    consumer = f"location-{uuid.uuid4().hex[:8]}"
    location = LocationSettings(
        consumer_name=consumer, driver_addr="", trip_addr="", shards=shards_for(redis_url)
    )
    driver = new_id()
    online = bus.make_envelope(
        driver_events.DriverWentOnline(driver_id=driver, vehicle_class=STANDARD),
        type=events.DRIVER_ONLINE,
        aggregate_id=driver,
        aggregate_version=1,
    )
    nc = await bus.connect(infra.nats_url, name="test")
    try:
        async with running(settings, location) as server:
            async with operator_channel(f"127.0.0.1:{server.port}") as channel:
                stub: Stub = location_pb2_grpc.LocationServiceStub(channel)
                await stub.ReportPosition(update(driver, *BERLIN), timeout=5)
                await bus.publish_envelope(nc.jetstream(), online)

                async def searchable() -> bool:
                    return await nearest_ids(stub, *BERLIN) == [driver]

                await eventually(searchable)
    finally:
        await nc.drain()

    assert not await index.claim_event(consumer, online.event_id)  # claimed by the service
    assert await index.claim_event("location", online.event_id)  # not under another name


async def test_driver_held_offered_by_a_dispatcher_that_died_is_released(
    infra: InfraUrls, redis_url: str
) -> None:
    driver = new_id()
    async with location_service(
        infra, redis_url, offer_hold_max_s=0.5, sweep_interval_s=0.1
    ) as stub:
        async with index_of(redis_url) as index:
            await go_online(index, stub, driver, *BERLIN)
        await stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=driver, trip_id="t1"), timeout=5)
        assert await nearest_ids(stub, *BERLIN) == []

        async def released() -> bool:
            return await nearest_ids(stub, *BERLIN) == [driver]

        await eventually(released, timeout_s=5)


async def test_an_older_change_never_undoes_a_newer_one(stub: Stub, index: LocationStore) -> None:
    driver = new_id()
    await go_online(index, stub, driver, *BERLIN)
    t = now_ms()
    await index.driver_offline(driver, at_ms=t)

    assert not await index.driver_online(driver, STANDARD, at_ms=t - 1)  # late, older
    assert not await index.free(driver, "t1", at_ms=t + 1)  # no trip holds the driver
    assert await nearest_ids(stub, *BERLIN) == []
    assert await index.driver_online(driver, STANDARD, at_ms=t + 2)
    assert await index.assign(driver, "t1", at_ms=t + 3)
    assert not await index.free(driver, "t0", at_ms=t + 4)  # another trip's end
    assert await nearest_ids(stub, *BERLIN) == []
    assert await index.free(driver, "t1", at_ms=t + 4)
    assert await nearest_ids(stub, *BERLIN) == [driver]


async def test_a_rebuild_snapshot_yields_to_newer_events_and_holds_taken_since(
    stub: Stub, index: LocationStore, redis_url: str
) -> None:
    went_offline, reserved, riding = new_id(), new_id(), new_id()
    for driver in (went_offline, reserved, riding):
        await stub.ReportPosition(update(driver, *BERLIN), timeout=5)
    snapshot_at = now_ms() - 5_000
    await index.driver_offline(went_offline, at_ms=snapshot_at + 1)  # an event after it
    await index.driver_online(reserved, STANDARD, at_ms=snapshot_at + 1)
    await index.reserve(reserved, "t-new")  # a hold taken after the snapshot was read
    entries = [
        SnapshotEntry(went_offline, STANDARD, Availability.AVAILABLE),
        SnapshotEntry(reserved, STANDARD, Availability.AVAILABLE),
        SnapshotEntry(riding, STANDARD, Availability.ON_TRIP, "t-ride"),
    ]

    assert await index.begin_rebuild("token", lock_ms=10_000)
    assert not await index.begin_rebuild("other", lock_ms=10_000)  # one rebuild at a time
    assert (
        await index.apply_snapshot(entries, at_ms=snapshot_at, token="token", lock_ms=10_000) == 1
    )
    assert await index.finish_rebuild("token", info="{}")
    assert await index.index_built()

    shown = {d: (await index.get(d)) for d in (went_offline, reserved, riding)}
    assert {d: p.availability for d, p in shown.items() if p is not None} == {
        went_offline: Availability.OFFLINE,
        reserved: Availability.OFFERED,
        riding: Availability.ON_TRIP,
    }
    assert await index.free(riding, "t-ride", at_ms=now_ms())  # the rebuilt hold is t-ride's
    assert await nearest_ids(stub, *BERLIN) == [riding]

    # Redis emptied during a rebuild: its lock goes with the data, and it is not marked done.
    assert await index.begin_rebuild("again", lock_ms=10_000)
    client = open_redis(redis_url, timeout_s=10)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    assert await index.apply_snapshot(entries, at_ms=now_ms(), token="again", lock_ms=1) is None
    assert not await index.finish_rebuild("again", info="{}")
    assert not await index.index_built()


async def test_a_trip_s_track_records_its_driver_only_while_on_trip(
    infra: InfraUrls, redis_url: str, index: LocationStore
) -> None:
    """Fixes are recorded for the trip holding the driver ON_TRIP, nothing before or after;
    GetTripDistance measures them, a teleport left out. (The top speed is raised: the
    reports here come milliseconds apart, and the service's clock bounds a track by the top
    speed times the time it saw; the filtering itself is unit-tested.)"""
    async with location_service(infra, redis_url, track_max_speed_mps=1e6) as stub:
        driver, trip = new_id(), f"trip-{uuid.uuid4().hex[:8]}"
        t = now_ms() - 600_000  # client times: ten minutes ago, 10 s apart
        await index.driver_online(driver, STANDARD, at_ms=now_ms())
        await stub.ReportPosition(update(driver, 52.5, 13.4, t), timeout=5)  # not on a trip
        assert await index.assign(driver, trip, at_ms=now_ms())
        since = now_ms()
        for i in range(1, 6):
            await stub.ReportPosition(update(driver, 52.5 + i * 0.001, 13.4, t + i * 10_000))
        # A jump to the other side of the world and back: not driving.
        await stub.ReportPosition(update(driver, -33.9, 151.2, t + 51_000), timeout=5)
        await stub.ReportPosition(update(driver, 52.506, 13.4, t + 60_000), timeout=5)
        until = now_ms()
        assert await index.free(driver, trip, at_ms=now_ms())
        await stub.ReportPosition(update(driver, 52.6, 13.4, t + 70_000), timeout=5)

        measured = await stub.GetTripDistance(
            pb.GetTripDistanceRequest(trip_id=trip, since_ms=since, until_ms=until), timeout=5
        )
        assert measured.distance_m == pytest.approx(5 * 111.195, rel=1e-3)  # 52.501 -> 52.506
        assert (measured.points_used, measured.points_ignored) == (6, 1)
        assert since <= measured.first_ts_ms <= measured.last_ts_ms <= until

        everything = await stub.GetTripDistance(pb.GetTripDistanceRequest(trip_id=trip), timeout=5)
        assert everything.points_used == 6  # nothing from before the hold or after it

        for bad, code in (
            (pb.GetTripDistanceRequest(trip_id=""), grpc.StatusCode.INVALID_ARGUMENT),
            (
                pb.GetTripDistanceRequest(trip_id=trip, since_ms=until, until_ms=since - 1),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (pb.GetTripDistanceRequest(trip_id="no-such-trip"), grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetTripDistance(bad, timeout=5)
            assert failed.value.code() == code
