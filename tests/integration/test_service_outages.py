"""Services and the edge while PostgreSQL, NATS or Redis is killed for real, and after it
comes back: NOT_SERVING and UNAVAILABLE (503 at the edge) meanwhile, never an exit or an
INTERNAL, and serving again on their own once the server has been restarted.

The servers are ``outage_infra``'s (tests/integration/conftest.py); each test restarts what
it kills, also when it fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import grpc
import httpx
import pytest

from edge.app import running as edge_running
from edge.auth import issue_token
from edge.settings import EdgeSettings
from location.app import running as location_running
from location.settings import LocationSettings
from protos import events
from protos.common.v1 import common_pb2
from protos.location.v1 import location_pb2, location_pb2_grpc
from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from protos.trip.v1 import events_pb2 as trip_events
from rider.app import running as rider_running
from rideshare import bus
from rideshare.grpc_errors import outage_of
from rideshare.infra import EmbeddedInfra
from rideshare.settings import InfraUrls, ServiceSettings
from rideshare.supervisor import grpc_healthy
from tests.helpers import eventually, grpc_status, operator_channel, publish_event
from tests.integration.edge_system import dead_address

# Generous: the machine may be busy, and health is re-checked every 2 s.
WITHIN_S = 60.0
# How long PostgreSQL and NATS stay down: every backoff in the services reaches its cap.
OUTAGE_S = 30.0


@pytest.fixture
def urls(outage_infra: EmbeddedInfra) -> InfraUrls:
    assert outage_infra.urls is not None
    return outage_infra.urls


@contextlib.asynccontextmanager
async def killed(embedded: EmbeddedInfra, name: str) -> AsyncIterator[None]:
    """``name`` killed with SIGKILL for the body, restarted (on its port) afterwards."""
    if name == "postgres":
        await _checkpoint(embedded)
    os.kill(embedded.pid(name), signal.SIGKILL)
    try:
        await eventually(lambda: name in embedded.dead(), timeout_s=WITHIN_S)
        yield
    finally:
        await embedded.restart(name)


async def _checkpoint(embedded: EmbeddedInfra) -> None:
    """Write out what was committed so far. ``durable=False`` commits asynchronously, and an
    idle WAL writer may hold the last seconds of commits (the test's schema) in memory,
    which a durable server would have written before answering the commit."""
    assert embedded.urls is not None
    conn = await asyncpg.connect(embedded.urls.postgres_dsn, timeout=10)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def throughout(check: Callable[[], Awaitable[bool]], duration_s: float) -> int:
    """Assert ``check()`` holds at every look, about once a second, for ``duration_s``;
    returns how many looks there were."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    looks = 0
    while loop.time() < end:
        assert await check(), f"no longer true after {looks} looks"
        looks += 1
        await asyncio.sleep(1.0)
    return looks


def serving(target: str, expected: bool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await grpc_healthy(target, timeout_s=2.0) is expected

    return check


async def answers_ok(call: Callable[[], Awaitable[object]]) -> bool:
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    return True


async def create_rider(stub: rider_pb2_grpc.RiderServiceAsyncStub) -> rider_pb2.Rider:
    request = rider_pb2.CreateRiderRequest(
        name="Ada", phone="+49151" + str(uuid.uuid4().int)[:8], password="correct horse battery"
    )
    return await stub.CreateRider(request, timeout=20)


async def test_a_refused_connect_is_an_outage_named_for_its_server() -> None:
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(f"postgresql://u:p@{dead_address()}/db", timeout=10)
    assert outage_of(refused.value) == "PostgreSQL"


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_rider_waits_out_a_postgres_outage_and_serves_again(
    outage_infra: EmbeddedInfra, urls: InfraUrls, unique_name: str
) -> None:
    settings = ServiceSettings(name="rider", infra=urls, grpc_port=0, shutdown_grace_s=1.0)
    async with (
        rider_running(settings, schema=unique_name, durable=unique_name) as server,
        operator_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        target = f"127.0.0.1:{server.port}"
        stub = rider_pb2_grpc.RiderServiceStub(channel)
        rider = await create_rider(stub)
        get = rider_pb2.GetRiderRequest(rider_id=rider.id)
        await eventually(serving(target, True), timeout_s=WITHIN_S)

        async with killed(outage_infra, "postgres"):
            await eventually(serving(target, False), timeout_s=WITHIN_S)

            async def waiting() -> bool:
                status = await grpc_status(stub.GetRider(get, timeout=10))
                return status == grpc.StatusCode.UNAVAILABLE and await serving(target, False)()

            assert await throughout(waiting, OUTAGE_S) >= 10

        await eventually(serving(target, True), timeout_s=WITHIN_S)
        await eventually(lambda: answers_ok(lambda: stub.GetRider(get, timeout=10)), WITHIN_S)
        assert (await stub.GetRider(get, timeout=10)).id == rider.id


# -- NATS ------------------------------------------------------------------------------------


def _requested(trip_id: str, rider_id: str) -> trip_events.TripRequested:
    return trip_events.TripRequested(
        trip_id=trip_id,
        rider_id=rider_id,
        vehicle_class=common_pb2.VEHICLE_CLASS_STANDARD,
        pickup=common_pb2.LatLng(lat=52.52, lng=13.40),
        dropoff=common_pb2.LatLng(lat=52.50, lng=13.45),
        fare=common_pb2.Money(amount_minor=1500, currency="EUR"),
        requested_at={"seconds": int(datetime.now(UTC).timestamp())},  # type: ignore[arg-type]
    )


async def test_rider_keeps_consuming_trip_events_after_nats_restarts(
    outage_infra: EmbeddedInfra, urls: InfraUrls, unique_name: str
) -> None:
    settings = ServiceSettings(name="rider", infra=urls, grpc_port=0, shutdown_grace_s=1.0)
    nc = await bus.connect(urls.nats_url, name=f"test-{unique_name}")
    try:
        js = nc.jetstream(timeout=5)
        async with (
            rider_running(settings, schema=unique_name, durable=unique_name) as server,
            operator_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            target = f"127.0.0.1:{server.port}"
            stub = rider_pb2_grpc.RiderServiceStub(channel)
            rider_id = (await create_rider(stub)).id
            before, after = (f"trip-{uuid.uuid4().hex[:8]}" for _ in range(2))

            def history(*expected: str) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    reply = await stub.ListTrips(
                        rider_pb2.ListTripsRequest(rider_id=rider_id), timeout=10
                    )
                    return {t.trip_id for t in reply.trips} == set(expected)

                return check

            await publish_event(
                js,
                events.TRIP_REQUESTED,
                _requested(before, rider_id),
                aggregate_id=before,
                version=1,
            )
            await eventually(history(before), timeout_s=WITHIN_S)

            async with killed(outage_infra, "nats"):
                await eventually(serving(target, False), timeout_s=WITHIN_S)
                assert await throughout(serving(target, False), OUTAGE_S) >= 10

            await eventually(serving(target, True), timeout_s=WITHIN_S)
            await eventually(lambda: nc.is_connected, timeout_s=WITHIN_S)
            await publish_event(
                js,
                events.TRIP_REQUESTED,
                _requested(after, rider_id),
                aggregate_id=after,
                version=1,
            )
            await eventually(history(before, after), timeout_s=WITHIN_S)
        with contextlib.suppress(Exception):
            await js.delete_consumer(events.STREAM, unique_name)
    finally:
        await nc.close()


# -- Redis -----------------------------------------------------------------------------------


async def test_location_answers_unavailable_without_redis_and_recovers(
    outage_infra: EmbeddedInfra, urls: InfraUrls
) -> None:
    settings = ServiceSettings(name="location", infra=urls, grpc_port=0, shutdown_grace_s=1.0)
    location = LocationSettings(consumer_name=f"location-{uuid.uuid4().hex[:8]}")
    async with (
        location_running(settings, location) as server,
        operator_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        target = f"127.0.0.1:{server.port}"
        stub = location_pb2_grpc.LocationServiceStub(channel)
        driver = f"driver-{uuid.uuid4().hex[:8]}"

        def report() -> Awaitable[object]:
            return stub.ReportPosition(
                location_pb2.PositionUpdate(
                    driver_id=driver,
                    lat=52.52,
                    lng=13.40,
                    client_ts_ms=int(datetime.now(UTC).timestamp() * 1000),
                ),
                timeout=10,
            )

        await report()
        await eventually(serving(target, True), timeout_s=WITHIN_S)
        async with killed(outage_infra, "redis"):
            assert await grpc_status(report()) == grpc.StatusCode.UNAVAILABLE
            await eventually(serving(target, False), timeout_s=WITHIN_S)
            assert await grpc_status(report()) == grpc.StatusCode.UNAVAILABLE

        await eventually(serving(target, True), timeout_s=WITHIN_S)
        await eventually(lambda: answers_ok(report), timeout_s=WITHIN_S)


# -- the edge --------------------------------------------------------------------------------

SECRET = "outage-test-secret-" + "x" * 16


async def test_edge_answers_503_with_retry_after_while_redis_is_down(
    outage_infra: EmbeddedInfra, urls: InfraUrls
) -> None:
    settings = EdgeSettings(
        infra=urls,
        jwt_secret=SECRET,
        upstreams={name: dead_address() for name in ("rider", "driver", "trip", "location")},
        port=0,
        shutdown_grace_s=1.0,
        call_timeout_s=2.0,
    )
    token = issue_token(SECRET, sub=f"rider-{uuid.uuid4().hex[:8]}", role="rider", ttl_s=600)
    body = {
        "quote_id": "q-1",
        "pickup": {"lat": 52.52, "lng": 13.40},
        "dropoff": {"lat": 52.50, "lng": 13.45},
    }
    async with (
        edge_running(settings) as edge,
        httpx.AsyncClient(
            base_url=edge.url, headers={"Authorization": f"Bearer {token}"}, timeout=20
        ) as http,
    ):

        async def post(key: str | None) -> httpx.Response:
            headers = {"Idempotency-Key": key} if key else {}
            return await http.post("/v1/trips", json=body, headers=headers)

        # An upstream that is not there: 503 with Retry-After, not 502.
        no_trip = await post(None)
        assert no_trip.status_code == 503, no_trip.text
        assert no_trip.headers["retry-after"].isdigit()
        assert no_trip.json()["error"]["code"] == "unavailable"

        async with killed(outage_infra, "redis"):
            # The rate limiter fails open; the idempotency key cannot be kept: 503.
            down = await post(uuid.uuid4().hex)
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"].isdigit()
            assert down.json()["error"] == {
                "code": "unavailable",
                "message": "Redis is unavailable; retry later",
            }

        async def trip_reached() -> bool:
            # Redis is back: the key is claimed and the (missing) trip service is asked.
            r = await post(uuid.uuid4().hex)
            assert r.status_code == 503, r.text
            return "Redis" not in r.json()["error"]["message"]

        await eventually(trip_reached, timeout_s=WITHIN_S)
