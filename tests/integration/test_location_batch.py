"""NearestDriversBatch and ReserveDrivers against real Redis and NATS, through real gRPC channels:
a batch answers what its calls one by one would. Every test runs on one Valkey (one pipeline
per batch) and on the session's Valkey Cluster (single calls side by side), as in
``test_location``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from location.domain import Availability
from location.store import LocationStore
from protos.common.v1 import common_pb2
from protos.location.v1 import location_pb2 as pb
from protos.location.v1 import location_pb2_grpc
from rideshare.grpc_client import make_channel
from rideshare.identity import TokenSigner, process_secret
from rideshare.redis_client import open_redis
from rideshare.settings import InfraUrls
from tests.integration.hostile import invalid_argument
from tests.integration.test_location import (  # noqa: F401 (fixtures)
    BERLIN,
    STANDARD,
    Stub,
    go_online,
    index,
    location_server,
    nearest_ids,
    new_id,
    redis_url,
    stub,
    valkey,
)

XL = common_pb2.VEHICLE_CLASS_XL
NEARBY = (BERLIN[0] + 0.02, BERLIN[1] + 0.03)  # ~3 km away: a second region


def search(
    centre: tuple[float, float],
    *,
    radius_m: float = 3_000,
    limit: int = 0,
    vehicle_class: common_pb2.VehicleClass.ValueType | None = None,
    exclude: tuple[str, ...] = (),
) -> pb.NearestDriversRequest:
    request = pb.NearestDriversRequest(
        lat=centre[0], lng=centre[1], radius_m=radius_m, limit=limit, exclude_driver_ids=exclude
    )
    if vehicle_class is not None:
        request.vehicle_class = vehicle_class
    return request


def without_age(reply: pb.NearestDriversResponse) -> pb.NearestDriversResponse:
    """The reply but the age of each position, which depends on when it was read."""
    copy = pb.NearestDriversResponse()
    copy.CopyFrom(reply)
    for driver in copy.drivers:
        driver.ClearField("position_age_ms")
    return copy


async def availability(store: LocationStore, driver_id: str) -> Availability | None:
    position = await store.get(driver_id)
    return None if position is None else position.availability


def holds(*pairs: tuple[str, str]) -> pb.ReserveDriversRequest:
    return pb.ReserveDriversRequest(
        holds=[pb.ReserveDriverRequest(driver_id=d, trip_id=t) for d, t in pairs]
    )


async def flush_scripts(url: str) -> None:
    """What a restart of a Valkey without persistence does to the scripts it had loaded."""
    client = open_redis(url, timeout_s=10)
    try:
        await client.script_flush()
    finally:
        await client.aclose()


# --- NearestDriversBatch ---------------------------------------------------------------------


async def test_a_batch_of_searches_answers_what_each_search_alone_does(
    stub: Stub,  # noqa: F811
    index: LocationStore,  # noqa: F811
) -> None:
    drivers: list[str] = []
    for n in range(12):
        for centre in (BERLIN, NEARBY):
            driver_id = new_id()
            offset = 0.0015 * n
            klass = XL if n % 3 == 0 else STANDARD
            await go_online(index, stub, driver_id, centre[0] + offset, centre[1] - offset, klass)
            drivers.append(driver_id)
    held = drivers[4]
    await stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=held, trip_id="t-held"), timeout=5)
    searches = [
        search(BERLIN),
        search(NEARBY, limit=3),
        search(BERLIN, vehicle_class=XL),
        search(NEARBY, vehicle_class=STANDARD, exclude=(drivers[1], drivers[3])),
        search(BERLIN, radius_m=400, limit=50),
        search(BERLIN, limit=1, exclude=(drivers[0],)),
        search((BERLIN[0] + 0.5, BERLIN[1]), radius_m=1_000),  # nobody there
        search(NEARBY, radius_m=60_000, limit=50),  # radius capped, both regions
    ]

    batch = await stub.NearestDriversBatch(
        pb.NearestDriversBatchRequest(searches=searches), timeout=10
    )
    alone = [await stub.NearestDrivers(s, timeout=5) for s in searches]

    assert [without_age(r) for r in batch.results] == [without_age(r) for r in alone]
    found = [[d.driver_id for d in r.drivers] for r in batch.results]
    assert len(found[0]) == 10 and len(found[1]) == 3 and found[6] == []
    assert held not in {d for ids in found for d in ids}
    assert not {drivers[1], drivers[3]} & set(found[3])
    assert {d.vehicle_class for d in batch.results[2].drivers} == {XL}
    assert len(found[7]) == len(drivers) - 1


async def test_an_empty_batch_of_searches_has_an_empty_answer(stub: Stub) -> None:  # noqa: F811
    reply = await stub.NearestDriversBatch(pb.NearestDriversBatchRequest(), timeout=5)
    assert list(reply.results) == []


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (search(BERLIN, radius_m=0), "searches[3]: radius_m"),
        (search((91.0, 0.0)), "searches[3]: centre"),
        (search(BERLIN, limit=-1), "searches[3]: limit"),
        (
            search(BERLIN, vehicle_class=common_pb2.VEHICLE_CLASS_UNSPECIFIED),
            "searches[3]: vehicle_class",
        ),
        (search(BERLIN, exclude=("d-1", "a.b")), "searches[3]: exclude_driver_ids"),
    ],
    ids=["zero-radius", "bad-centre", "negative-limit", "unspecified-class", "bad-exclude"],
)
async def test_a_bad_search_fails_the_batch_naming_its_index(
    stub: Stub,  # noqa: F811
    bad: pb.NearestDriversRequest,
    expected: str,
) -> None:
    searches = [search(BERLIN), search(NEARBY), search(BERLIN, limit=2), bad, search(BERLIN)]
    request = pb.NearestDriversBatchRequest(searches=searches)
    details = await invalid_argument(stub.NearestDriversBatch(request, timeout=5))
    assert details.startswith(expected), details


async def test_a_batch_holds_at_most_a_thousand_searches(stub: Stub) -> None:  # noqa: F811
    far = (BERLIN[0] - 1.0, BERLIN[1])  # nobody there: one round per search
    request = pb.NearestDriversBatchRequest(searches=[search(far, radius_m=100)] * 1_001)
    assert "at most 1000" in await invalid_argument(stub.NearestDriversBatch(request, timeout=5))
    del request.searches[-1]
    reply = await stub.NearestDriversBatch(request, timeout=60)
    assert len(reply.results) == 1_000


# --- ReserveDrivers --------------------------------------------------------------------------


async def test_reserve_drivers_holds_each_available_driver_for_its_trip_once(
    stub: Stub,  # noqa: F811
    index: LocationStore,  # noqa: F811
) -> None:
    a, b, c, busy, offline = new_id(), new_id(), new_id(), new_id(), new_id()
    for driver_id in (a, b, c, busy):
        await go_online(index, stub, driver_id, *BERLIN)
    await stub.ReserveDriver(pb.ReserveDriverRequest(driver_id=busy, trip_id="t0"), timeout=5)
    await index.driver_online(offline, STANDARD, at_ms=0)
    await index.driver_offline(offline, at_ms=1)

    reply = await stub.ReserveDrivers(
        holds((a, "t1"), (busy, "t2"), (b, "t1"), (a, "t3"), (offline, "t4"), (c, "t5")),
        timeout=10,
    )

    assert list(reply.reserved) == [True, False, True, False, False, True]
    assert await nearest_ids(stub, *BERLIN) == []
    for driver_id in (a, b, c, busy):
        assert await availability(index, driver_id) is Availability.OFFERED
    # Refused ones are as they were: the busy driver is still held for its own trip.
    refused = pb.ReleaseDriverRequest(driver_id=busy, trip_id="t2")
    assert not (await stub.ReleaseDriver(refused, timeout=5)).released
    assert (
        await stub.ReleaseDriver(pb.ReleaseDriverRequest(driver_id=busy, trip_id="t0"), timeout=5)
    ).released
    # Each held for the trip that took it: the trip that was refused cannot release it.
    assert not (
        await stub.ReleaseDriver(pb.ReleaseDriverRequest(driver_id=a, trip_id="t3"), timeout=5)
    ).released
    for driver_id, trip_id in ((a, "t1"), (b, "t1"), (c, "t5")):
        request = pb.ReleaseDriverRequest(driver_id=driver_id, trip_id=trip_id)
        assert (await stub.ReleaseDriver(request, timeout=5)).released
    assert sorted(await nearest_ids(stub, *BERLIN)) == sorted([a, b, c, busy])


async def test_an_empty_batch_of_holds_has_an_empty_answer(stub: Stub) -> None:  # noqa: F811
    reply = await stub.ReserveDrivers(pb.ReserveDriversRequest(), timeout=5)
    assert list(reply.reserved) == []


async def test_a_bad_hold_fails_the_batch_naming_its_index_and_holds_nobody(
    stub: Stub,  # noqa: F811
    index: LocationStore,  # noqa: F811
) -> None:
    driver = new_id()
    await go_online(index, stub, driver, *BERLIN)
    for bad, expected in (
        (("d-1", ""), "holds[2]: trip_id"),
        (("", "t-1"), "holds[2]: driver_id"),
        (("a.b", "t-1"), "holds[2]: driver_id"),
    ):
        request = holds((driver, "t1"), (new_id(), "t1"), bad)
        details = await invalid_argument(stub.ReserveDrivers(request, timeout=5))
        assert details.startswith(expected), details
    too_many = holds(*((new_id(), "t1") for _ in range(1_001)))
    assert "at most 1000" in await invalid_argument(stub.ReserveDrivers(too_many, timeout=5))
    assert await nearest_ids(stub, *BERLIN) == [driver]


async def test_two_racing_batches_hold_each_driver_exactly_once(
    stub: Stub,  # noqa: F811
    index: LocationStore,  # noqa: F811
) -> None:
    drivers = [new_id() for _ in range(50)]
    for n, driver_id in enumerate(drivers):
        await go_online(index, stub, driver_id, BERLIN[0] + 0.0001 * n, BERLIN[1])
    forward = holds(*((d, "t-a") for d in drivers))
    backward = holds(*((d, "t-b") for d in reversed(drivers)))

    a, b = await asyncio.gather(
        stub.ReserveDrivers(forward, timeout=30), stub.ReserveDrivers(backward, timeout=30)
    )

    won_by_a = list(a.reserved)
    won_by_b = list(reversed(b.reserved))
    assert [x != y for x, y in zip(won_by_a, won_by_b, strict=True)] == [True] * 50
    for driver_id, by_a in zip(drivers, won_by_a, strict=True):
        winner, loser = ("t-a", "t-b") if by_a else ("t-b", "t-a")
        lost = pb.ReleaseDriverRequest(driver_id=driver_id, trip_id=loser)
        assert not (await stub.ReleaseDriver(lost, timeout=5)).released
        won = pb.ReleaseDriverRequest(driver_id=driver_id, trip_id=winner)
        assert (await stub.ReleaseDriver(won, timeout=5)).released
    found = await stub.NearestDrivers(search(BERLIN, limit=50), timeout=5)
    assert sorted(d.driver_id for d in found.drivers) == sorted(drivers)


async def test_batches_load_the_scripts_a_restarted_valkey_lost(
    stub: Stub,  # noqa: F811
    index: LocationStore,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    driver = new_id()
    await go_online(index, stub, driver, *BERLIN)
    await flush_scripts(redis_url)
    batch = await stub.NearestDriversBatch(
        pb.NearestDriversBatchRequest(searches=[search(BERLIN), search(NEARBY)]), timeout=10
    )
    assert [[d.driver_id for d in r.drivers] for r in batch.results] == [[driver], []]
    await flush_scripts(redis_url)
    reply = await stub.ReserveDrivers(holds((driver, "t1"), (driver, "t2")), timeout=10)
    assert list(reply.reserved) == [True, False]


# --- who may call ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stub_as(target: str, service: str) -> AsyncIterator[Stub]:
    signer = TokenSigner(process_secret(), service)
    async with make_channel(target, signer=signer, default_timeout_s=10.0) as channel:
        yield location_pb2_grpc.LocationServiceStub(channel)


async def test_the_trip_service_may_batch_and_the_edge_may_not(
    infra: InfraUrls,
    redis_url: str,  # noqa: F811
) -> None:
    async with location_server(infra, redis_url) as target:
        async with stub_as(target, "trip") as trip, stub_as(target, "edge") as edge:
            searches = pb.NearestDriversBatchRequest(searches=[search(BERLIN)])
            held = holds((new_id(), "t1"))
            assert len((await trip.NearestDriversBatch(searches)).results) == 1
            assert list((await trip.ReserveDrivers(held)).reserved) == [False]
            for call in (edge.NearestDriversBatch(searches), edge.ReserveDrivers(held)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
