"""Availability comes back by itself after Redis loses it: the driver, trip and location
services in-process against real Postgres, Redis and NATS, through real gRPC channels.

Drivers go online through the driver service, take trips through the trip service, and keep
reporting positions while the test empties the location service's Redis database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
import pytest
import redis.asyncio as aioredis

from driver.app import running as driver_running
from location.app import running as location_running
from location.settings import LocationSettings
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2, driver_pb2_grpc
from protos.location.v1 import location_pb2 as loc
from protos.location.v1 import location_pb2_grpc
from protos.trip.v1 import trip_pb2, trip_pb2_grpc
from rideshare.db import create_pool, quote_schema
from rideshare.infra import free_port
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, operator_channel
from trip.app import running as trip_running
from trip.settings import TripSettings

logger = logging.getLogger(__name__)

DriverStub: TypeAlias = "driver_pb2_grpc.DriverServiceAsyncStub"
TripStub: TypeAlias = "trip_pb2_grpc.TripServiceAsyncStub"
LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"

PICKUP = (52.5200, 13.4050)
DROPOFF = (52.5300, 13.4300)
STANDARD = common_pb2.VEHICLE_CLASS_STANDARD
BUILT_MARKER = "loc:{0}:index:built"  # shard 0 of one


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def service(name: str, infra: InfraUrls, port: int = 0) -> ServiceSettings:
    return ServiceSettings(name=name, infra=infra, grpc_port=port, shutdown_grace_s=1.0)


@dataclass
class City:
    """Three services and the drivers' phones, which report every 0.3 s until the end."""

    infra: InfraUrls
    schema: str
    redis: aioredis.Redis
    driver_port: int
    trip_port: int
    drivers: DriverStub
    location: LocationStub
    location_port: int
    phones: dict[str, tuple[float, float]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def trip_service(self) -> AsyncIterator[TripStub]:
        settings = TripSettings(
            location_addr=f"127.0.0.1:{self.location_port}",
            radius_steps_m=(1000, 3000),
            consumer_name=f"{self.schema}_trip",
            dispatch_poll_s=0.05,
            offer_timeout_s=60.0,
        )
        async with (
            trip_running(
                service("trip", self.infra, self.trip_port), settings, schema=f"{self.schema}_trip"
            ),
            operator_channel(f"127.0.0.1:{self.trip_port}") as channel,
        ):
            # The location service dialled this port before the trip service was up: in one
            # process, channels to one address share its connection, and its reconnect backoff.
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            yield trip_pb2_grpc.TripServiceStub(channel)

    async def online_driver(self, point: tuple[float, float]) -> str:
        """A driver signed up, with a vehicle, online through the driver service, reporting
        positions from ``point``."""
        suffix = uuid.uuid4().hex[:8]
        driver = await self.drivers.CreateDriver(
            driver_pb2.CreateDriverRequest(
                name="Bo",
                phone="+44770" + str(uuid.uuid4().int)[:8],
                password="correct horse battery",
                license_number="L-1",
            ),
            timeout=10,
        )
        vehicle = await self.drivers.AddVehicle(
            driver_pb2.AddVehicleRequest(
                driver_id=driver.id,
                make="Toyota",
                model="Prius",
                plate=f"B-{suffix}",
                seats=4,
                vehicle_class=STANDARD,
            ),
            timeout=5,
        )
        await self.drivers.GoOnline(
            driver_pb2.GoOnlineRequest(driver_id=driver.id, vehicle_id=vehicle.id), timeout=5
        )
        self.phones[driver.id] = point
        await self.report(driver.id)
        return driver.id

    async def report(self, driver_id: str) -> None:
        lat, lng = self.phones[driver_id]
        await self.location.ReportPosition(
            loc.PositionUpdate(
                driver_id=driver_id, lat=lat, lng=lng, accuracy_m=5.0, client_ts_ms=now_ms()
            ),
            timeout=5,
        )

    async def keep_reporting(self) -> None:
        while True:
            for driver_id in list(self.phones):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.report(driver_id)
            await asyncio.sleep(0.3)

    async def availability(self, driver_id: str) -> int | None:
        """The driver's availability in the index; None while location has no position for
        the driver (after a flush, until the phone reports again)."""
        try:
            position = await self.location.GetPosition(
                loc.GetPositionRequest(driver_id=driver_id), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return int(position.availability)

    async def becomes(self, driver_id: str, availability: int, timeout_s: float = 10) -> None:
        async def shown() -> bool:
            return await self.availability(driver_id) == availability

        await eventually(shown, timeout_s=timeout_s)

    async def nearest(self) -> list[str]:
        reply = await self.location.NearestDrivers(
            loc.NearestDriversRequest(lat=PICKUP[0], lng=PICKUP[1], radius_m=3000, limit=10),
            timeout=5,
        )
        return [d.driver_id for d in reply.drivers]

    async def index_built(self) -> bool:
        return bool(await self.redis.exists(BUILT_MARKER))


@pytest.fixture
async def city(infra: InfraUrls, redis_url: str, unique_name: str) -> AsyncIterator[City]:
    """Driver and location services running; the trip service is the test's to start (on
    ``city.trip_port``, where the location service looks for it)."""
    driver_port, trip_port = free_port(), free_port()
    location_infra = InfraUrls(
        redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url
    )
    location_settings = LocationSettings(
        consumer_name=f"{unique_name}_location",
        driver_addr=f"127.0.0.1:{driver_port}",
        trip_addr=f"127.0.0.1:{trip_port}",
        rebuild_check_s=0.2,
    )
    redis = aioredis.Redis.from_url(redis_url)
    driver_schema = f"{unique_name}_driver"
    try:
        async with (
            driver_running(
                service("driver", infra, driver_port), schema=driver_schema, durable=driver_schema
            ),
            location_running(service("location", location_infra), location_settings) as loc_srv,
            operator_channel(f"127.0.0.1:{driver_port}") as driver_channel,
            operator_channel(f"127.0.0.1:{loc_srv.port}") as location_channel,
        ):
            city = City(
                infra=infra,
                schema=unique_name,
                redis=redis,
                driver_port=driver_port,
                trip_port=trip_port,
                drivers=driver_pb2_grpc.DriverServiceStub(driver_channel),
                location=location_pb2_grpc.LocationServiceStub(location_channel),
                location_port=loc_srv.port,
            )
            phones = asyncio.create_task(city.keep_reporting())
            try:
                yield city
            finally:
                phones.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await phones
    finally:
        await redis.aclose()
        pool = await create_pool(infra.postgres_dsn, schema=driver_schema, max_size=1)
        try:
            for schema in (driver_schema, f"{unique_name}_trip"):
                await pool.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")
        finally:
            await pool.close()


async def book(stub: TripStub, rider_id: str) -> trip_pb2.Trip:
    quote = await stub.EstimateFare(
        trip_pb2.EstimateFareRequest(
            rider_id=rider_id,
            pickup=common_pb2.LatLng(lat=PICKUP[0], lng=PICKUP[1]),
            dropoff=common_pb2.LatLng(lat=DROPOFF[0], lng=DROPOFF[1]),
            vehicle_class=STANDARD,
        ),
        timeout=5,
    )
    return await stub.RequestTrip(
        trip_pb2.RequestTripRequest(
            rider_id=rider_id, quote_id=quote.quote_id, pickup=quote.pickup, dropoff=quote.dropoff
        ),
        timeout=5,
    )


async def offer_of(stub: TripStub, trip_id: str) -> trip_pb2.Offer:
    found: list[trip_pb2.Offer] = []

    async def offered() -> bool:
        trip = await stub.GetTrip(trip_pb2.GetTripRequest(trip_id=trip_id), timeout=5)
        found[:] = [trip.current_offer] if trip.HasField("current_offer") else []
        return bool(found)

    await eventually(offered, timeout_s=10)
    return found[0]


@dataclass(frozen=True)
class Busy:
    on_trip: str
    offered: str
    offering_trip: str
    free: list[str]


async def busy_city(city: City, trips: TripStub) -> Busy:
    """Four drivers online near the pickup: the nearest on a trip, the next holding an
    offer, two available."""
    on_trip = await city.online_driver((PICKUP[0] + 0.001, PICKUP[1]))
    offered = await city.online_driver((PICKUP[0] + 0.002, PICKUP[1]))
    free = [
        await city.online_driver((PICKUP[0] + 0.004, PICKUP[1])),
        await city.online_driver((PICKUP[0] + 0.006, PICKUP[1])),
    ]
    for driver_id in (on_trip, offered, *free):
        await city.becomes(driver_id, loc.AVAILABILITY_AVAILABLE)
    first = await book(trips, f"r-{uuid.uuid4().hex[:8]}")
    offer = await offer_of(trips, first.id)
    assert offer.driver_id == on_trip
    await trips.AcceptTrip(
        trip_pb2.AcceptTripRequest(trip_id=first.id, driver_id=on_trip, offer_id=offer.offer_id),
        timeout=5,
    )
    await city.becomes(on_trip, loc.AVAILABILITY_ON_TRIP)
    second = await book(trips, f"r-{uuid.uuid4().hex[:8]}")
    assert (await offer_of(trips, second.id)).driver_id == offered
    await city.becomes(offered, loc.AVAILABILITY_OFFERED)
    assert await city.nearest() == free
    return Busy(on_trip, offered, second.id, free)


async def test_availability_is_rebuilt_after_redis_is_flushed_and_dispatch_finds_drivers(
    city: City,
) -> None:
    async with city.trip_service() as trips:
        busy = await busy_city(city, trips)
        await eventually(city.index_built)

        await city.redis.flushdb()
        flushed = time.monotonic()

        async def found_again() -> bool:
            return await city.nearest() == busy.free

        await eventually(found_again, timeout_s=10)
        logger.warning("drivers found again %.2fs after the flush", time.monotonic() - flushed)
        assert await city.index_built()
        # The flush took the positions too: each driver shows again at its next report.
        await city.becomes(busy.on_trip, loc.AVAILABILITY_ON_TRIP)
        await city.becomes(busy.offered, loc.AVAILABILITY_OFFERED)

        third = await book(trips, f"r-{uuid.uuid4().hex[:8]}")
        assert (await offer_of(trips, third.id)).driver_id == busy.free[0]
        logger.warning("a new trip was offered %.2fs after the flush", time.monotonic() - flushed)

        # The rebuilt hold is the second trip's: its decline (an event) frees the driver.
        pending = await offer_of(trips, busy.offering_trip)
        await trips.DeclineTrip(
            trip_pb2.DeclineTripRequest(
                trip_id=busy.offering_trip, driver_id=busy.offered, offer_id=pending.offer_id
            ),
            timeout=5,
        )
        await city.becomes(busy.offered, loc.AVAILABILITY_AVAILABLE)


async def test_rebuild_waits_for_the_trip_service_and_completes_when_it_returns(
    city: City,
) -> None:
    async with city.trip_service() as trips:
        busy = await busy_city(city, trips)
        await eventually(city.index_built)

    await city.redis.flushdb()
    # Several check intervals with the trip service gone: nothing is marked rebuilt, and no
    # driver is shown free on the driver service's word alone (some are on trips).
    await asyncio.sleep(1.5)
    assert not await city.index_built()
    assert await city.nearest() == []

    async with city.trip_service():

        async def found_again() -> bool:
            return await city.nearest() == busy.free

        await eventually(found_again, timeout_s=15)
        assert await city.index_built()
        # The flush took the positions too: each driver shows again at its next report.
        await city.becomes(busy.on_trip, loc.AVAILABILITY_ON_TRIP)
        await city.becomes(busy.offered, loc.AVAILABILITY_OFFERED)


async def test_rebuild_waits_for_the_driver_service_and_completes_when_it_returns(
    infra: InfraUrls, redis_url: str, unique_name: str
) -> None:
    driver_port, trip_port = free_port(), free_port()
    location_infra = InfraUrls(
        redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url
    )
    settings = LocationSettings(
        consumer_name=f"{unique_name}_location",
        driver_addr=f"127.0.0.1:{driver_port}",
        trip_addr=f"127.0.0.1:{trip_port}",
        rebuild_check_s=0.2,
    )
    redis = aioredis.Redis.from_url(redis_url)
    driver_schema = f"{unique_name}_driver"
    try:
        async with (
            location_running(service("location", location_infra), settings) as loc_srv,
            operator_channel(f"127.0.0.1:{loc_srv.port}") as location_channel,
        ):
            location = location_pb2_grpc.LocationServiceStub(location_channel)
            trip_settings = TripSettings(
                location_addr=f"127.0.0.1:{loc_srv.port}", consumer_name=f"{unique_name}_trip"
            )
            async with trip_running(
                service("trip", infra, trip_port), trip_settings, schema=f"{unique_name}_trip"
            ):
                await asyncio.sleep(1.0)  # several checks: the driver service is not there
                assert not await redis.exists(BUILT_MARKER)

                async with (
                    driver_running(
                        service("driver", infra, driver_port),
                        schema=driver_schema,
                        durable=driver_schema,
                    ),
                    operator_channel(f"127.0.0.1:{driver_port}") as driver_channel,
                ):
                    city = City(
                        infra=infra,
                        schema=unique_name,
                        redis=redis,
                        driver_port=driver_port,
                        trip_port=trip_port,
                        drivers=driver_pb2_grpc.DriverServiceStub(driver_channel),
                        location=location,
                        location_port=loc_srv.port,
                    )

                    async def built() -> bool:
                        return bool(await redis.exists(BUILT_MARKER))

                    await eventually(built, timeout_s=15)
                    driver_id = await city.online_driver(PICKUP)
                    await city.becomes(driver_id, loc.AVAILABILITY_AVAILABLE)
                    assert await city.nearest() == [driver_id]
    finally:
        await redis.aclose()
        pool = await create_pool(infra.postgres_dsn, schema=driver_schema, max_size=1)
        try:
            for schema in (driver_schema, f"{unique_name}_trip"):
                await pool.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")
        finally:
            await pool.close()
