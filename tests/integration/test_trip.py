"""The trip service against real Postgres, Redis and NATS, with an in-process location service,
through real gRPC channels."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from location.app import running as location_running
from location.settings import LocationSettings
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.location.v1 import location_pb2 as loc
from protos.location.v1 import location_pb2_grpc
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2 as pb
from protos.trip.v1 import trip_pb2_grpc
from rideshare import bus
from rideshare.bus import Envelope
from rideshare.db import create_pool
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import eventually, operator_channel
from tests.integration.edge_system import dead_address
from tests.integration.hostile import BAD_IDS, forged_tokens, invalid_argument
from trip.app import running as trip_running
from trip.dispatch import Dispatcher, LocationClient
from trip.pricing import LatLng, estimate_route
from trip.settings import TripSettings
from trip.store import TripStore

LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"
TripStub: TypeAlias = "trip_pb2_grpc.TripServiceAsyncStub"

PICKUP = (52.5200, 13.4050)
DROPOFF = (52.5300, 13.4300)
STANDARD = common_pb2.VEHICLE_CLASS_STANDARD


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def latlng(point: tuple[float, float]) -> common_pb2.LatLng:
    return common_pb2.LatLng(lat=point[0], lng=point[1])


# --- harness -------------------------------------------------------------------------------


@dataclass
class EventTap:
    """Every trip.* event published from now on, as it arrives on JetStream."""

    events: list[Envelope] = field(default_factory=list)
    queue: asyncio.Queue[Envelope] = field(default_factory=asyncio.Queue)

    async def on_message(self, msg: Msg) -> None:
        envelope = bus.decode_envelope(msg.data)
        self.events.append(envelope)
        self.queue.put_nowait(envelope)

    def types_of(self, trip_id: str) -> list[str]:
        return [e.type for e in self.events if e.aggregate_id == trip_id]

    def of(self, subject: str, trip_id: str) -> list[Envelope]:
        return [e for e in self.events if e.type == subject and e.aggregate_id == trip_id]

    async def wait_for(self, subject: str, trip_id: str, *, count: int = 1) -> list[Envelope]:
        async def seen() -> bool:
            return len(self.of(subject, trip_id)) >= count

        await eventually(seen, timeout_s=10)
        return self.of(subject, trip_id)


@dataclass
class Harness:
    infra: InfraUrls
    schema: str
    location_port: int
    location: LocationStub
    tap: EventTap
    js: object

    def trip_settings(self, **overrides: object) -> TripSettings:
        values: dict[str, object] = {
            "location_addr": f"127.0.0.1:{self.location_port}",
            "radius_steps_m": (1000, 3000),
            "consumer_name": self.schema,
            "dispatch_poll_s": 0.05,
        }
        values.update(overrides)
        return TripSettings(**values)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def trip_service(self, **overrides: object) -> AsyncIterator[TripStub]:
        settings = ServiceSettings(name="trip", infra=self.infra, grpc_port=0, shutdown_grace_s=1.0)
        async with (
            trip_running(settings, self.trip_settings(**overrides), schema=self.schema) as server,
            operator_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            yield trip_pb2_grpc.TripServiceStub(channel)

    async def go_online(self, driver_id: str, point: tuple[float, float]) -> None:
        """driver.online as the driver service publishes it, and a position; returns once
        the location service made the driver AVAILABLE from the event."""
        online = bus.make_envelope(
            driver_events.DriverWentOnline(driver_id=driver_id, vehicle_class=STANDARD),
            type=events.DRIVER_ONLINE,
            aggregate_id=driver_id,
            aggregate_version=1,
        )
        await bus.publish_envelope(self.js, online)  # type: ignore[arg-type]
        await self.report(driver_id, point)

        async def available() -> bool:
            return await self.availability(driver_id) == loc.AVAILABILITY_AVAILABLE

        await eventually(available)

    async def becomes(self, driver_id: str, availability: int) -> None:
        """Wait until the location service shows the driver with ``availability``."""

        async def shown() -> bool:
            return await self.availability(driver_id) == availability

        await eventually(shown)

    async def report(self, driver_id: str, point: tuple[float, float]) -> None:
        await self.location.ReportPosition(
            loc.PositionUpdate(
                driver_id=driver_id,
                lat=point[0],
                lng=point[1],
                accuracy_m=5.0,
                client_ts_ms=time.time_ns() // 1_000_000,
            ),
            timeout=5,
        )

    async def availability(self, driver_id: str) -> int:
        position = await self.location.GetPosition(
            loc.GetPositionRequest(driver_id=driver_id), timeout=5
        )
        return int(position.availability)


@pytest.fixture
async def harness(infra: InfraUrls, redis_url: str, unique_name: str) -> AsyncIterator[Harness]:
    location_settings = ServiceSettings(
        name="location",
        infra=InfraUrls(
            redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url
        ),
        grpc_port=0,
        shutdown_grace_s=1.0,
    )
    tap = EventTap()
    nc = await bus.connect(infra.nats_url, name=f"test-{unique_name}")
    try:
        js = nc.jetstream(timeout=5)
        await bus.ensure_stream(js)
        sub = await js.subscribe(
            "trip.>",
            stream=events.STREAM,
            cb=tap.on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        async with (
            location_running(
                location_settings, LocationSettings(driver_addr="", trip_addr="")
            ) as server,
            operator_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            yield Harness(
                infra=infra,
                schema=unique_name,
                location_port=server.port,
                location=location_pb2_grpc.LocationServiceStub(channel),
                tap=tap,
                js=js,
            )
        await sub.unsubscribe()
    finally:
        async with asyncio.timeout(10):
            await nc.drain()


async def quote_for(
    stub: TripStub, rider_id: str, pickup: tuple[float, float] = PICKUP
) -> pb.Quote:
    return await stub.EstimateFare(
        pb.EstimateFareRequest(
            pickup=latlng(pickup),
            dropoff=latlng(DROPOFF),
            vehicle_class=STANDARD,
            rider_id=rider_id,
        ),
        timeout=5,
    )


def request_for(quote: pb.Quote, rider_id: str) -> pb.RequestTripRequest:
    return pb.RequestTripRequest(
        rider_id=rider_id,
        quote_id=quote.quote_id,
        pickup=quote.pickup,
        dropoff=quote.dropoff,
        pickup_address="Alexanderplatz 1",
    )


async def book(stub: TripStub, rider_id: str, pickup: tuple[float, float] = PICKUP) -> pb.Trip:
    quote = await quote_for(stub, rider_id, pickup)
    return await stub.RequestTrip(request_for(quote, rider_id), timeout=5)


async def trip_in(stub: TripStub, trip_id: str, states: Iterable[int]) -> pb.Trip:
    wanted = set(states)
    found: list[pb.Trip] = []

    async def reached() -> bool:
        trip = await stub.GetTrip(pb.GetTripRequest(trip_id=trip_id), timeout=5)
        found[:] = [trip]
        return trip.state in wanted

    await eventually(reached, timeout_s=15)
    return found[0]


async def offer_of(tap: EventTap, trip_id: str, count: int = 1) -> trip_events.TripOffered:
    offers = await tap.wait_for(events.TRIP_OFFERED, trip_id, count=count)
    return offers[count - 1].unpack(trip_events.TripOffered)


@contextlib.asynccontextmanager
async def auto_accepting(
    tap: EventTap,
    stub: TripStub,
    *,
    riders: set[str] | None = None,
    drivers: set[str] | None = None,
) -> AsyncIterator[list[grpc.aio.AioRpcError]]:
    """Drivers accept every offer for ``riders``' trips (or offered to ``drivers``) at once."""
    failures: list[grpc.aio.AioRpcError] = []

    async def accept(offer: trip_events.TripOffered) -> None:
        try:
            await stub.AcceptTrip(
                pb.AcceptTripRequest(
                    trip_id=offer.trip_id, driver_id=offer.driver_id, offer_id=offer.offer_id
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            failures.append(exc)

    async def run() -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                envelope = await tap.queue.get()
                if envelope.type != events.TRIP_OFFERED:
                    continue
                offer = envelope.unpack(trip_events.TripOffered)
                if (riders is not None and offer.rider_id in riders) or (
                    drivers is not None and offer.driver_id in drivers
                ):
                    group.create_task(accept(offer))

    task = asyncio.create_task(run())
    try:
        yield failures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def riding(harness: Harness, stub: TripStub, driver: str, rider: str) -> pb.Trip:
    """A trip of ``rider`` booked, accepted by ``driver`` (online near the pickup) and
    started, with the location service holding the driver ON_TRIP for it."""
    await harness.go_online(driver, (PICKUP[0] + 0.001, PICKUP[1]))
    trip = await book(stub, rider)
    offer = await offer_of(harness.tap, trip.id)
    await stub.AcceptTrip(
        pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id),
        timeout=5,
    )
    await harness.becomes(driver, loc.AVAILABILITY_ON_TRIP)
    await stub.ArriveAtPickup(pb.ArriveAtPickupRequest(trip_id=trip.id, driver_id=driver))
    return await stub.StartTrip(pb.StartTripRequest(trip_id=trip.id, driver_id=driver), timeout=5)


def trip_quote_distance(trip: pb.Trip) -> int:
    """The quote's route estimate for ``trip`` (the trip message does not carry it)."""
    pickup, dropoff = trip.pickup, trip.dropoff
    return estimate_route(LatLng(pickup.lat, pickup.lng), LatLng(dropoff.lat, dropoff.lng))[0]


# --- the tests -----------------------------------------------------------------------------


async def test_a_driver_reporting_ten_thousand_km_and_a_week_pays_what_the_rule_allows(
    harness: Harness,
) -> None:
    """The finding: the driver's figures priced the fare (10.35 EUR became 13,522.50). Now
    the driver drives ~40 m reporting positions as an app does, then claims 10,000 km and a
    week: the fare comes from the recorded track and the service's clock, within the band
    around the quote, and the trip shows what it was settled from."""
    driver, rider = new_id("d"), new_id("r")
    async with harness.trip_service() as stub:
        trip = await riding(harness, stub, driver, rider)
        for i in range(5):  # 10 m every 0.4 s: 25 m/s, a plausible car
            await harness.report(driver, (PICKUP[0] + 0.001 + i * 0.00009, PICKUP[1]))
            await asyncio.sleep(0.4)
        done = await stub.CompleteTrip(
            pb.CompleteTripRequest(
                trip_id=trip.id, driver_id=driver, distance_m=10_000_000, duration_s=604_800
            ),
            timeout=10,
        )
        settled = done.settlement
        quoted = trip.quoted_fare.amount_minor
        assert done.state == pb.TRIP_STATE_COMPLETED
        assert (settled.reported_distance_m, settled.reported_duration_s) == (
            10_000_000,
            604_800,
        )
        assert settled.distance_source == pb.MEASURE_SOURCE_LOCATION_TRACK
        assert settled.track_points == 5
        assert 30 <= settled.measured_distance_m <= 50
        assert done.distance_m == settled.measured_distance_m
        assert settled.duration_source == pb.MEASURE_SOURCE_SERVER_CLOCK
        assert 0 <= settled.measured_duration_s == done.duration_s < 120
        assert settled.quoted_fare == trip.quoted_fare
        assert settled.band_high.amount_minor == (quoted * 11 + 5) // 10
        assert settled.band_low.amount_minor == (quoted * 8 + 5) // 10
        # A 40 m ride of seconds prices at the minimum fare: within the band, or below it.
        assert settled.rule in (pb.FARE_RULE_WITHIN_BAND, pb.FARE_RULE_BELOW_BAND)
        expected = (
            settled.measured_fare if settled.rule == pb.FARE_RULE_WITHIN_BAND else settled.band_low
        )
        assert done.final_fare == expected
        assert done.final_fare.amount_minor <= settled.band_high.amount_minor
        assert settled.flagged_for_review == (settled.rule == pb.FARE_RULE_BELOW_BAND)

        stored = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)
        assert stored.settlement == settled and stored.final_fare == done.final_fare
        completed = (await harness.tap.wait_for(events.TRIP_COMPLETED, trip.id))[0]
        assert completed.unpack(trip_events.TripCompleted).fare == done.final_fare


async def test_a_ride_whose_distance_location_cannot_say_in_time_pays_the_quote(
    harness: Harness,
) -> None:
    """The ride runs on one copy of the trip service; the driver ends it on another copy,
    which cannot reach the location service at all."""
    driver, rider = new_id("d"), new_id("r")
    async with harness.trip_service() as stub:
        trip = await riding(harness, stub, driver, rider)
        await harness.report(driver, (PICKUP[0] + 0.002, PICKUP[1]))
    async with harness.trip_service(location_addr=dead_address()) as cut_off:
        done = await cut_off.CompleteTrip(
            pb.CompleteTripRequest(trip_id=trip.id, driver_id=driver, distance_m=10_000_000),
            timeout=15,
        )
    assert done.final_fare == trip.quoted_fare
    assert done.charge_basis == pb.CHARGE_BASIS_QUOTE
    assert done.settlement.rule == pb.FARE_RULE_NO_MEASUREMENT
    assert done.settlement.distance_source == pb.MEASURE_SOURCE_NONE
    assert not done.settlement.HasField("measured_distance_m")
    assert not done.settlement.flagged_for_review


async def test_full_trip_from_request_to_ratings_publishes_every_event(harness: Harness) -> None:
    driver, rider = new_id("d"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.002, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        assert trip.state == pb.TRIP_STATE_REQUESTED
        assert trip.quoted_fare.amount_minor > 0 and trip.quoted_fare.currency == "EUR"

        offer = await offer_of(harness.tap, trip.id)
        assert (offer.driver_id, offer.rider_id, offer.attempt) == (driver, rider, 1)
        assert 150 < offer.distance_to_pickup_m < 300
        assert await harness.availability(driver) == loc.AVAILABILITY_OFFERED

        accepted = await stub.AcceptTrip(
            pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id),
            timeout=5,
        )
        assert (accepted.state, accepted.driver_id) == (pb.TRIP_STATE_ACCEPTED, driver)

        async def on_trip() -> bool:
            return await harness.availability(driver) == loc.AVAILABILITY_ON_TRIP

        await eventually(on_trip)
        await stub.ArriveAtPickup(pb.ArriveAtPickupRequest(trip_id=trip.id, driver_id=driver))
        await stub.StartTrip(pb.StartTripRequest(trip_id=trip.id, driver_id=driver), timeout=5)
        done = await stub.CompleteTrip(
            pb.CompleteTripRequest(
                trip_id=trip.id, driver_id=driver, distance_m=3_500, duration_s=600
            ),
            timeout=5,
        )
        assert done.state == pb.TRIP_STATE_COMPLETED
        # No position during the ride, so nothing measured its distance: the quote holds,
        # and what the driver reported is recorded beside it.
        assert done.final_fare == trip.quoted_fare
        assert done.settlement.rule == pb.FARE_RULE_NO_MEASUREMENT
        assert (done.settlement.reported_distance_m, done.settlement.reported_duration_s) == (
            3_500,
            600,
        )
        assert done.distance_m == trip_quote_distance(trip)

        async def free_again() -> bool:
            return await harness.availability(driver) == loc.AVAILABILITY_AVAILABLE

        await eventually(free_again)
        await stub.RateTrip(
            pb.RateTripRequest(trip_id=trip.id, actor=pb.ACTOR_RIDER, actor_id=rider, stars=5),
            timeout=5,
        )
        rated = await stub.RateTrip(
            pb.RateTripRequest(trip_id=trip.id, actor=pb.ACTOR_DRIVER, actor_id=driver, stars=4),
            timeout=5,
        )
        assert (rated.rider_rating, rated.driver_rating) == (5, 4)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.RateTrip(
                pb.RateTripRequest(trip_id=trip.id, actor=pb.ACTOR_RIDER, actor_id=rider, stars=1),
                timeout=5,
            )
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        await harness.tap.wait_for(events.TRIP_RATED, trip.id, count=2)
        assert harness.tap.types_of(trip.id) == [
            events.TRIP_REQUESTED,
            events.TRIP_OFFERED,
            events.TRIP_ACCEPTED,
            events.TRIP_ARRIVED,
            events.TRIP_STARTED,
            events.TRIP_COMPLETED,
            events.TRIP_RATED,
            events.TRIP_RATED,
        ]
        versions = [e.aggregate_version for e in harness.tap.events if e.aggregate_id == trip.id]
        assert versions == sorted(versions)
        full = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)
        assert [h.command for h in full.history] == [
            "request",
            "dispatch",
            "offer",
            "accept",
            "arrive",
            "start",
            "complete",
        ]
        completed = harness.tap.of(events.TRIP_COMPLETED, trip.id)[0]
        assert completed.unpack(trip_events.TripCompleted).fare == done.final_fare


async def test_offer_timeout_moves_to_the_next_driver_and_frees_the_first(
    harness: Harness,
) -> None:
    near, far, rider = new_id("d"), new_id("d"), new_id("r")
    await harness.go_online(near, (PICKUP[0] + 0.001, PICKUP[1]))
    await harness.go_online(far, (PICKUP[0] + 0.004, PICKUP[1]))
    async with harness.trip_service(offer_timeout_s=0.5) as stub:
        trip = await book(stub, rider)
        first = await offer_of(harness.tap, trip.id)
        second = await offer_of(harness.tap, trip.id, count=2)

        assert (first.driver_id, second.driver_id) == (near, far)
        assert second.attempt == 2
        ended = (await harness.tap.wait_for(events.TRIP_OFFER_ENDED, trip.id))[0]
        assert (
            ended.unpack(trip_events.TripOfferEnded).reason == trip_events.OFFER_END_REASON_EXPIRED
        )

        async def near_free() -> bool:
            return await harness.availability(near) == loc.AVAILABILITY_AVAILABLE

        await eventually(near_free)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.AcceptTrip(
                pb.AcceptTripRequest(trip_id=trip.id, driver_id=near, offer_id=first.offer_id),
                timeout=5,
            )
        # Their offer over, the trip is no longer theirs to see: not found, not its state.
        assert late.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_declined_offer_moves_to_the_next_driver(harness: Harness) -> None:
    near, far, rider = new_id("d"), new_id("d"), new_id("r")
    await harness.go_online(near, (PICKUP[0] + 0.001, PICKUP[1]))
    await harness.go_online(far, (PICKUP[0] + 0.004, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        first = await offer_of(harness.tap, trip.id)
        assert first.driver_id == near
        await stub.DeclineTrip(
            pb.DeclineTripRequest(trip_id=trip.id, driver_id=near, offer_id=first.offer_id),
            timeout=5,
        )
        second = await offer_of(harness.tap, trip.id, count=2)

        assert second.driver_id == far
        ended = harness.tap.of(events.TRIP_OFFER_ENDED, trip.id)[0]
        assert (
            ended.unpack(trip_events.TripOfferEnded).reason == trip_events.OFFER_END_REASON_DECLINED
        )
        await harness.becomes(near, loc.AVAILABILITY_AVAILABLE)


async def test_rider_cancel_during_dispatch_releases_the_offered_driver(
    harness: Harness,
) -> None:
    driver, rider = new_id("d"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.001, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        offer = await offer_of(harness.tap, trip.id)
        assert await harness.availability(driver) == loc.AVAILABILITY_OFFERED

        cancelled = await stub.CancelTrip(
            pb.CancelTripRequest(
                trip_id=trip.id, actor=pb.ACTOR_RIDER, actor_id=rider, reason="changed my mind"
            ),
            timeout=5,
        )

        assert cancelled.state == pb.TRIP_STATE_CANCELLED
        assert not cancelled.HasField("cancellation_fee")
        assert not cancelled.HasField("current_offer")
        await harness.becomes(driver, loc.AVAILABILITY_AVAILABLE)
        event = (await harness.tap.wait_for(events.TRIP_CANCELLED, trip.id))[0]
        assert event.unpack(trip_events.TripCancelled).driver_id == driver
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.AcceptTrip(
                pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id),
                timeout=5,
            )
        # The offer ended with the trip: to its driver the trip is as gone as one never made,
        # so that the answer does not tell them the rider cancelled.
        assert late.value.code() == grpc.StatusCode.NOT_FOUND
        assert late.value.details() == "trip not found"


async def test_fifty_riders_and_ten_drivers_never_double_book(harness: Harness) -> None:
    drivers = [new_id("d") for _ in range(10)]
    riders = {new_id("r") for _ in range(50)}
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, (PICKUP[0] + 0.0005 * (i + 1), PICKUP[1]))
    async with (
        harness.trip_service(radius_steps_m=(1000, 2000)) as stub,
        auto_accepting(harness.tap, stub, riders=riders) as failures,
    ):
        trips = await asyncio.gather(*(book(stub, rider) for rider in riders))
        ended = await asyncio.gather(
            *(
                trip_in(stub, t.id, (pb.TRIP_STATE_ACCEPTED, pb.TRIP_STATE_NO_DRIVERS))
                for t in trips
            )
        )
        # The index learns ON_TRIP from trip.accepted: while the trip service (its outbox
        # relay) still runs.
        for driver in drivers:
            await harness.becomes(driver, loc.AVAILABILITY_ON_TRIP)

    accepted = [t for t in ended if t.state == pb.TRIP_STATE_ACCEPTED]
    assert len(accepted) == 10
    assert sorted(t.driver_id for t in accepted) == sorted(drivers)
    assert not failures


async def test_ten_concurrent_accepts_of_one_offer_one_wins(harness: Harness) -> None:
    driver, rider = new_id("d"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.001, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        offer = await offer_of(harness.tap, trip.id)
        request = pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id)

        results = await asyncio.gather(
            *(stub.AcceptTrip(request, timeout=5) for _ in range(10)), return_exceptions=True
        )

    won = [r for r in results if isinstance(r, pb.Trip)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 9
    assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert all("cannot accept when state=ACCEPTED" in (e.details() or "") for e in lost)
    assert len(harness.tap.of(events.TRIP_ACCEPTED, trip.id)) <= 1


async def test_parallel_offers_drivers_accepting_one_trip_at_once_one_wins(
    harness: Harness,
) -> None:
    """Five drivers offered one trip at once all accept it, twice each, at the same moment:
    one wins, the others' offers end as taken elsewhere and they are free again."""
    drivers, rider = [new_id("d") for _ in range(5)], new_id("r")
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, (PICKUP[0] + 0.0005 * (i + 1), PICKUP[1]))
    async with harness.trip_service(parallel_offers=5) as stub:
        trip = await book(stub, rider)
        await offer_of(harness.tap, trip.id, count=5)
        offers = [
            e.unpack(trip_events.TripOffered) for e in harness.tap.of(events.TRIP_OFFERED, trip.id)
        ]
        assert sorted(o.driver_id for o in offers) == sorted(drivers)
        requests = [
            pb.AcceptTripRequest(trip_id=trip.id, driver_id=o.driver_id, offer_id=o.offer_id)
            for o in offers
        ]
        results = await asyncio.gather(
            *(stub.AcceptTrip(r, timeout=5) for r in requests * 2), return_exceptions=True
        )
        ended = await harness.tap.wait_for(events.TRIP_OFFER_ENDED, trip.id, count=4)
        done = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)
        winner = done.driver_id
        await harness.becomes(winner, loc.AVAILABILITY_ON_TRIP)
        for driver in set(drivers) - {winner}:
            await harness.becomes(driver, loc.AVAILABILITY_AVAILABLE)

    won = [r for r in results if isinstance(r, pb.Trip)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 9
    assert {e.code() for e in lost} <= {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,  # a driver whose offer ended no longer sees the trip
    }
    assert done.state == pb.TRIP_STATE_ACCEPTED and not done.current_offers
    assert len(harness.tap.of(events.TRIP_ACCEPTED, trip.id)) == 1
    reasons = [e.unpack(trip_events.TripOfferEnded) for e in ended]
    assert sorted(r.driver_id for r in reasons) == sorted(set(drivers) - {winner})
    assert {r.reason for r in reasons} == {trip_events.OFFER_END_REASON_ACCEPTED_ELSEWHERE}


async def test_parallel_offers_a_driver_never_holds_two_offers(harness: Harness) -> None:
    """Six trips booked at once, three offers each, four drivers: every driver is offered
    at most one trip, whatever the dispatch steps of the trips race for."""
    drivers = [new_id("d") for _ in range(4)]
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, (PICKUP[0] + 0.0005 * (i + 1), PICKUP[1]))
    async with harness.trip_service(parallel_offers=3, offer_timeout_s=30.0) as stub:
        trips = await asyncio.gather(*(book(stub, new_id("r")) for _ in range(6)))

        async def settled() -> bool:
            found = [await stub.GetTrip(pb.GetTripRequest(trip_id=t.id), timeout=5) for t in trips]
            held = [o.driver_id for t in found for o in t.current_offers]
            return len(held) == len(drivers) and all(
                t.state in (pb.TRIP_STATE_DISPATCHING, pb.TRIP_STATE_NO_DRIVERS) for t in found
            )

        await eventually(settled, timeout_s=15)
        found = [await stub.GetTrip(pb.GetTripRequest(trip_id=t.id), timeout=5) for t in trips]
        for driver in drivers:
            await harness.becomes(driver, loc.AVAILABILITY_OFFERED)

    held = [o.driver_id for t in found for o in t.current_offers]
    assert sorted(held) == sorted(drivers)  # each once
    assert all(len(t.current_offers) <= 3 for t in found)
    assert all(
        t.current_offer.offer_id == t.current_offers[0].offer_id for t in found if t.current_offers
    )


async def test_dispatch_resumes_after_a_restart(harness: Harness) -> None:
    near, far, rider = new_id("d"), new_id("d"), new_id("r")
    await harness.go_online(near, (PICKUP[0] + 0.001, PICKUP[1]))
    await harness.go_online(far, (PICKUP[0] + 0.004, PICKUP[1]))
    async with harness.trip_service(offer_timeout_s=1.0) as stub:
        trip = await book(stub, rider)
        first = await offer_of(harness.tap, trip.id)
        assert first.driver_id == near
    # The first copy is gone with the offer pending; a new one on the same schema takes over.
    async with (
        harness.trip_service(offer_timeout_s=1.0) as stub,
        auto_accepting(harness.tap, stub, drivers={far}),
    ):
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED, pb.TRIP_STATE_NO_DRIVERS))

    assert (done.state, done.driver_id) == (pb.TRIP_STATE_ACCEPTED, far)
    assert [h.command for h in done.history][-3:] == ["expire_offer", "offer", "accept"]


async def test_trip_without_drivers_nearby_ends_no_drivers(harness: Harness) -> None:
    far_away = new_id("d")
    await harness.go_online(far_away, (PICKUP[0] + 0.5, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, new_id("r"))
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_NO_DRIVERS,))
        event = (await harness.tap.wait_for(events.TRIP_NO_DRIVERS, trip.id))[0]

    assert done.HasField("ended_at")
    assert event.unpack(trip_events.TripNoDrivers).max_radius_m == 3000


async def test_expired_foreign_and_used_quotes_are_rejected(harness: Harness) -> None:
    rider, other = new_id("r"), new_id("r")
    async with harness.trip_service(quote_ttl_s=0.3) as stub:
        quote = await quote_for(stub, rider)
        request = request_for(quote, other)
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await stub.RequestTrip(request, timeout=5)
        assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # until the quote's own expiry has passed on the wall clock the service reads
        expires_s = quote.expires_at.ToMilliseconds() / 1000
        await eventually(lambda: time.time() > expires_s, timeout_s=10)
        request.rider_id = rider
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await stub.RequestTrip(request, timeout=5)
        assert expired.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expired" in (expired.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.RequestTrip(
                pb.RequestTripRequest(
                    rider_id=rider,
                    quote_id="nope",
                    pickup=latlng(PICKUP),
                    dropoff=latlng(DROPOFF),
                ),
                timeout=5,
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    await harness.go_online(new_id("d"), (PICKUP[0] + 0.001, PICKUP[1]))  # keeps it live
    async with harness.trip_service() as stub:
        request = request_for(await quote_for(stub, rider), rider)
        first, second = await asyncio.gather(
            stub.RequestTrip(request, timeout=5),
            stub.RequestTrip(request, timeout=5),
            return_exceptions=True,
        )
        # A double tap is one booking: both answers are the one trip it made.
        assert isinstance(first, pb.Trip) and isinstance(second, pb.Trip), (first, second)
        assert first.id == second.id
        # ... and so is a retry after a lost answer.
        again = await stub.RequestTrip(request, timeout=5)
        assert again.id == first.id
        listed = await stub.ListTrips(pb.ListTripsRequest(rider_id=rider), timeout=5)
        assert [t.id for t in listed.trips if t.quote_id == request.quote_id] == [first.id]

        # A second quote while the first trip is live: one live trip per rider.
        with pytest.raises(grpc.aio.AioRpcError) as live:
            await book(stub, rider)
        assert live.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_failed_precondition_names_the_state_and_the_command(harness: Harness) -> None:
    rider = new_id("r")
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        await trip_in(stub, trip.id, (pb.TRIP_STATE_NO_DRIVERS,))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CancelTrip(
                pb.CancelTripRequest(trip_id=trip.id, actor=pb.ACTOR_RIDER, actor_id=rider),
                timeout=5,
            )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetTrip(
                pb.GetTripRequest(trip_id="nope", actor=pb.ACTOR_RIDER, actor_id=rider), timeout=5
            )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.EstimateFare(
                pb.EstimateFareRequest(
                    pickup=common_pb2.LatLng(lat=91, lng=0),
                    dropoff=latlng(DROPOFF),
                    vehicle_class=STANDARD,
                    rider_id=rider,
                ),
                timeout=5,
            )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "cannot cancel when state=NO_DRIVERS"
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_driver_cancel_sends_the_trip_back_to_dispatch_without_them(
    harness: Harness,
) -> None:
    first, second, rider = new_id("d"), new_id("d"), new_id("r")
    await harness.go_online(first, (PICKUP[0] + 0.001, PICKUP[1]))
    async with (
        harness.trip_service() as stub,
        auto_accepting(harness.tap, stub, riders={rider}),
    ):
        trip = await book(stub, rider)
        await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED,))
        await harness.go_online(second, (PICKUP[0] + 0.002, PICKUP[1]))
        await stub.CancelTrip(
            pb.CancelTripRequest(
                trip_id=trip.id, actor=pb.ACTOR_DRIVER, actor_id=first, reason="flat tyre"
            ),
            timeout=5,
        )
        await harness.tap.wait_for(events.TRIP_ACCEPTED, trip.id, count=2)
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED,))

    assert done.driver_id == second
    assert harness.tap.of(events.TRIP_DRIVER_CANCELLED, trip.id)
    await harness.becomes(first, loc.AVAILABILITY_AVAILABLE)


async def test_driver_going_offline_releases_their_pending_offer(harness: Harness) -> None:
    near, far, rider = new_id("d"), new_id("d"), new_id("r")
    await harness.go_online(near, (PICKUP[0] + 0.001, PICKUP[1]))
    await harness.go_online(far, (PICKUP[0] + 0.004, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        assert (await offer_of(harness.tap, trip.id)).driver_id == near
        offline = bus.make_envelope(
            driver_events.DriverWentOffline(driver_id=near),
            type=events.DRIVER_OFFLINE,
            aggregate_id=near,
            aggregate_version=2,
        )
        await bus.publish_envelope(harness.js, offline)  # type: ignore[arg-type]
        second = await offer_of(harness.tap, trip.id, count=2)

    assert second.driver_id == far
    ended = harness.tap.of(events.TRIP_OFFER_ENDED, trip.id)[0].unpack(trip_events.TripOfferEnded)
    assert ended.reason == trip_events.OFFER_END_REASON_DRIVER_OFFLINE


async def test_list_trips_pages_newest_first(harness: Harness) -> None:
    riders = [new_id("r") for _ in range(3)]
    async with harness.trip_service() as stub:
        booked = [await book(stub, rider) for rider in riders]
        seen: list[str] = []
        token = ""
        for _ in range(3):
            page = await stub.ListTrips(
                pb.ListTripsRequest(page_size=2, page_token=token), timeout=5
            )
            seen += [t.id for t in page.trips]
            token = page.next_page_token
            if not token:
                break
        mine = await stub.ListTrips(pb.ListTripsRequest(rider_id=riders[1]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ListTrips(pb.ListTripsRequest(page_token="garbage!"), timeout=5)

    assert seen == [t.id for t in reversed(booked)]
    assert [t.id for t in mine.trips] == [booked[1].id]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- every live state has a clock (trip/liveness.py) ---------------------------------------

# Short limits: a driver silent for 1.5 s before pickup is replaced; a ride silent for 1 s is
# flagged and ended after 2.5 s. Apps report every 0.2 s, well inside them.
CLOCKS: dict[str, object] = {
    "driver_silent_s": 1.5,
    "ride_silent_flag_s": 1.0,
    "ride_silent_end_s": 2.5,
    "sweep_poll_s": 0.1,
}


@contextlib.asynccontextmanager
async def reporting(
    harness: Harness, drivers: dict[str, tuple[float, float]], *, every_s: float = 0.2
) -> AsyncIterator[dict[str, int]]:
    """Driver apps that keep reporting their position; drop a driver from ``drivers`` and its
    app falls silent. Yields the number of reports sent per driver."""
    sent: dict[str, int] = {}

    async def run() -> None:
        while True:
            for driver_id, point in list(drivers.items()):
                await harness.location.ReportPosition(
                    loc.PositionUpdate(
                        driver_id=driver_id,
                        lat=point[0],
                        lng=point[1],
                        accuracy_m=5.0,
                        client_ts_ms=time.time_ns() // 1_000_000,
                    ),
                    timeout=5,
                )
                sent[driver_id] = sent.get(driver_id, 0) + 1
            await asyncio.sleep(every_s)  # an app's report interval, not a wait

    task = asyncio.create_task(run())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def history_of(trip: pb.Trip) -> list[tuple[str, int]]:
    return [(record.command, record.actor) for record in trip.history]


async def test_a_driver_silent_after_accepting_is_replaced_by_a_reporting_driver(
    harness: Harness,
) -> None:
    silent, reporting_driver, rider = new_id("d"), new_id("d"), new_id("r")
    near, farther = (PICKUP[0] + 0.001, PICKUP[1]), (PICKUP[0] + 0.003, PICKUP[1])
    await harness.go_online(silent, near)
    await harness.go_online(reporting_driver, farther)
    async with (
        harness.trip_service(**CLOCKS) as stub,
        reporting(harness, {reporting_driver: farther}),
        auto_accepting(harness.tap, stub, drivers={silent, reporting_driver}),
    ):
        trip = await book(stub, rider)
        assert (await offer_of(harness.tap, trip.id)).driver_id == silent
        # `silent` accepts and never reports again.
        released = (await harness.tap.wait_for(events.TRIP_DRIVER_CANCELLED, trip.id))[0]
        second = await offer_of(harness.tap, trip.id, count=2)
        await harness.tap.wait_for(events.TRIP_ACCEPTED, trip.id, count=2)
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED,))

        async def silent_driver_freed() -> bool:
            return await harness.availability(silent) == loc.AVAILABILITY_AVAILABLE

        await eventually(silent_driver_freed)

    event = released.unpack(trip_events.TripDriverCancelled)
    assert (event.driver_id, event.liveness_rule) == (
        silent,
        trip_events.LIVENESS_RULE_DRIVER_SILENT,
    )
    assert event.from_state == pb.TRIP_STATE_ACCEPTED
    assert event.reason.startswith("driver silent for ")
    assert second.driver_id == reporting_driver
    assert done.driver_id == reporting_driver
    assert ("reassign", pb.ACTOR_SYSTEM) in history_of(done)


async def test_a_silent_driver_with_no_one_else_near_ends_the_trip_and_frees_the_rider(
    harness: Harness,
) -> None:
    silent, rider = new_id("d"), new_id("r")
    await harness.go_online(silent, (PICKUP[0] + 0.001, PICKUP[1]))
    async with (
        harness.trip_service(**CLOCKS) as stub,
        auto_accepting(harness.tap, stub, drivers={silent}),
    ):
        trip = await book(stub, rider)
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_NO_DRIVERS,))
        ended = (await harness.tap.wait_for(events.TRIP_NO_DRIVERS, trip.id))[0]
        again = await book(stub, rider)  # no 409: the rider's live trip is over

    assert ("reassign", pb.ACTOR_SYSTEM) in history_of(done)
    assert done.history[-1].reason == "no drivers within 3 km"
    assert ended.unpack(trip_events.TripNoDrivers).reason == "no drivers within 3 km"
    assert again.state == pb.TRIP_STATE_REQUESTED


async def test_a_ride_whose_driver_falls_silent_is_flagged_then_ended_at_the_quote(
    harness: Harness,
) -> None:
    driver, rider = new_id("d"), new_id("r")
    point = (PICKUP[0] + 0.001, PICKUP[1])
    await harness.go_online(driver, point)
    apps = {driver: point}
    async with (
        harness.trip_service(**CLOCKS) as stub,
        reporting(harness, apps),
        auto_accepting(harness.tap, stub, drivers={driver}),
    ):
        trip = await book(stub, rider)
        await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED,))
        await stub.ArriveAtPickup(
            pb.ArriveAtPickupRequest(trip_id=trip.id, driver_id=driver), timeout=5
        )
        await stub.StartTrip(pb.StartTripRequest(trip_id=trip.id, driver_id=driver), timeout=5)
        del apps[driver]  # the phone dies mid-ride
        flagged = (await harness.tap.wait_for(events.TRIP_FLAGGED, trip.id))[0]
        completed = (await harness.tap.wait_for(events.TRIP_COMPLETED, trip.id))[0]
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_COMPLETED,))

        async def driver_freed() -> bool:
            return await harness.availability(driver) == loc.AVAILABILITY_AVAILABLE

        await eventually(driver_freed)

    flag = flagged.unpack(trip_events.TripFlagged)
    assert (flag.driver_id, flag.rider_id) == (driver, rider)
    assert flag.liveness_rule == trip_events.LIVENESS_RULE_RIDE_SILENT
    end = completed.unpack(trip_events.TripCompleted)
    assert end.completed_by == pb.ACTOR_SYSTEM
    assert end.liveness_rule == trip_events.LIVENESS_RULE_RIDE_SILENT
    assert end.charge_basis == pb.CHARGE_BASIS_QUOTE
    assert end.fare == trip.quoted_fare
    assert end.reason.startswith("driver silent for ")
    assert harness.tap.types_of(trip.id).index(events.TRIP_FLAGGED) < harness.tap.types_of(
        trip.id
    ).index(events.TRIP_COMPLETED)
    assert done.final_fare == trip.quoted_fare and done.charge_basis == pb.CHARGE_BASIS_QUOTE
    assert done.settlement.rule == pb.FARE_RULE_DRIVER_SILENT
    assert done.HasField("flagged_at") and done.flag_reason.startswith("driver silent for ")
    assert history_of(done)[-2:] == [("flag", pb.ACTOR_SYSTEM), ("complete", pb.ACTOR_SYSTEM)]


async def test_a_driver_who_keeps_reporting_is_never_reassigned(harness: Harness) -> None:
    driver, rider = new_id("d"), new_id("r")
    point = (PICKUP[0] + 0.001, PICKUP[1])
    await harness.go_online(driver, point)
    async with (
        harness.trip_service(**CLOCKS) as stub,
        reporting(harness, {driver: point}) as sent,
        auto_accepting(harness.tap, stub, drivers={driver}),
    ):
        trip = await book(stub, rider)
        await trip_in(stub, trip.id, (pb.TRIP_STATE_ACCEPTED,))
        reports_at_accept = sent.get(driver, 0)

        async def three_silence_limits_of_reports() -> bool:
            # 0.2 s apart: 25 reports span 5 s, more than three times driver_silent_s.
            return sent.get(driver, 0) - reports_at_accept >= 25

        await eventually(three_silence_limits_of_reports, timeout_s=30)
        still = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)

    assert (still.state, still.driver_id) == (pb.TRIP_STATE_ACCEPTED, driver)
    assert not harness.tap.of(events.TRIP_DRIVER_CANCELLED, trip.id)


def unreachable_location() -> dict[str, object]:
    """Trip settings pointing at a port nothing listens on, with a short dispatch clock."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    return {
        "location_addr": dead,
        "location_timeout_s": 0.2,
        "max_wait_s": 1.0,
        "offer_timeout_s": 0.5,
        "dispatch_limit_s": 2.0,
        "sweep_poll_s": 0.1,
    }


async def test_a_trip_whose_dispatch_cannot_run_is_ended_by_its_clock(harness: Harness) -> None:
    """With the location service unreachable dispatch cannot search: the trip would wait in
    REQUESTED for as long as the outage lasts. Its clock ends it, and the rider is free."""
    rider = new_id("r")
    async with harness.trip_service(**unreachable_location()) as stub:
        trip = await book(stub, rider)
        done = await trip_in(stub, trip.id, (pb.TRIP_STATE_CANCELLED,))
        cancelled = (await harness.tap.wait_for(events.TRIP_CANCELLED, trip.id))[0]
        again = await book(stub, rider)

    event = cancelled.unpack(trip_events.TripCancelled)
    assert (event.cancelled_by, event.liveness_rule) == (
        pb.ACTOR_SYSTEM,
        trip_events.LIVENESS_RULE_DISPATCH_STALLED,
    )
    assert done.cancel_reason == event.reason and "dispatch did not finish" in event.reason
    assert again.state == pb.TRIP_STATE_REQUESTED


async def test_every_due_trip_is_swept_when_there_are_more_than_a_page(harness: Harness) -> None:
    riders = [new_id("r") for _ in range(20)]  # one sweeper page is 16 with concurrency 1
    async with harness.trip_service(**unreachable_location(), sweep_concurrency=1) as stub:
        trips = [await book(stub, rider) for rider in riders]
        for trip in trips:
            await trip_in(stub, trip.id, (pb.TRIP_STATE_CANCELLED,))


async def test_on_trip_and_free_again_in_the_index_come_from_the_trip_events(
    harness: Harness, redis_url: str
) -> None:
    """Trip only holds and releases drivers for its offers; ON_TRIP and the AVAILABLE after
    the ride are the location service's, applied from trip.accepted and trip.completed:
    the index records each event's time and the trip holding the driver."""
    driver, rider = new_id("d"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.001, PICKUP[1]))
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with harness.trip_service() as stub:
            trip = await book(stub, rider)
            offer = await offer_of(harness.tap, trip.id)
            await stub.AcceptTrip(
                pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id),
                timeout=5,
            )
            accepted = (await harness.tap.wait_for(events.TRIP_ACCEPTED, trip.id))[0]
            await harness.becomes(driver, loc.AVAILABILITY_ON_TRIP)
            stamp, holder = await client.hmget(f"loc:{{0}}:d:{driver}", ["t", "h"])
            assert isinstance(stamp, bytes)
            assert int(stamp) == int(accepted.occurred_at.timestamp() * 1000)
            assert holder == trip.id.encode()

            await stub.ArriveAtPickup(pb.ArriveAtPickupRequest(trip_id=trip.id, driver_id=driver))
            await stub.StartTrip(pb.StartTripRequest(trip_id=trip.id, driver_id=driver), timeout=5)
            await stub.CompleteTrip(
                pb.CompleteTripRequest(trip_id=trip.id, driver_id=driver), timeout=5
            )
            completed = (await harness.tap.wait_for(events.TRIP_COMPLETED, trip.id))[0]
            await harness.becomes(driver, loc.AVAILABILITY_AVAILABLE)
            stamp, holder = await client.hmget(f"loc:{{0}}:d:{driver}", ["t", "h"])
            assert isinstance(stamp, bytes)
            assert int(stamp) == int(completed.occurred_at.timestamp() * 1000)
            assert holder is None

            # A late copy of trip.accepted (a new event id, its old time) changes nothing.
            late = bus.make_envelope(
                accepted.unpack(trip_events.TripAccepted),
                type=events.TRIP_ACCEPTED,
                aggregate_id=trip.id,
                aggregate_version=accepted.aggregate_version,
                occurred_at=accepted.occurred_at,
            )
            await bus.publish_envelope(harness.js, late)  # type: ignore[arg-type]
            marker = new_id("d")
            await harness.go_online(marker, (PICKUP[0] + 0.01, PICKUP[1]))  # consumed after it
            assert await harness.availability(driver) == loc.AVAILABILITY_AVAILABLE
    finally:
        await client.aclose()


async def test_active_assignments_list_drivers_on_live_trips_and_with_pending_offers(
    harness: Harness,
) -> None:
    riding, offered, rider_a, rider_b = new_id("d"), new_id("d"), new_id("r"), new_id("r")
    await harness.go_online(riding, (PICKUP[0] + 0.001, PICKUP[1]))
    async with harness.trip_service(offer_timeout_s=60.0) as stub:
        first = await book(stub, rider_a)
        offer = await offer_of(harness.tap, first.id)
        await stub.AcceptTrip(
            pb.AcceptTripRequest(trip_id=first.id, driver_id=riding, offer_id=offer.offer_id),
            timeout=5,
        )
        await harness.go_online(offered, (PICKUP[0] + 0.002, PICKUP[1]))
        second = await book(stub, rider_b)
        assert (await offer_of(harness.tap, second.id)).driver_id == offered

        listed: list[pb.DriverAssignment] = []
        token = ""
        while True:
            reply = await stub.ListActiveAssignments(
                pb.ListActiveAssignmentsRequest(page_size=1, page_token=token), timeout=5
            )
            listed += reply.assignments
            token = reply.next_page_token
            if not token:
                break
        bad = pb.ListActiveAssignmentsRequest(page_size=-1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListActiveAssignments(bad, timeout=5)

    assert sorted((a.driver_id, a.trip_id, a.kind) for a in listed) == sorted(
        [
            (riding, first.id, pb.ASSIGNMENT_KIND_ON_TRIP),
            (offered, second.id, pb.ASSIGNMENT_KIND_OFFERED),
        ]
    )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class CancelWhileReserving(LocationClient):
    """The real location client; right after it reserves a driver, the rider cancels the trip
    through the trip service, as a rider may while dispatch talks to location."""

    def __init__(self, target: str, stub: TripStub, rider_id: str) -> None:
        super().__init__(target, timeout_s=5.0)
        self._trips = stub
        self._rider_id = rider_id
        self.reserved: list[str] = []

    async def reserve(self, driver_id: str, *, trip_id: str) -> bool:
        reserved = await super().reserve(driver_id, trip_id=trip_id)
        if reserved:
            self.reserved.append(driver_id)
            await self._trips.CancelTrip(
                pb.CancelTripRequest(
                    trip_id=trip_id, actor=pb.ACTOR_RIDER, actor_id=self._rider_id
                ),
                timeout=5,
            )
        return reserved


async def test_a_cancel_while_dispatch_holds_a_driver_wins_and_the_driver_is_released(
    harness: Harness,
) -> None:
    """Dispatch holds no lock on the trip while it calls location: the rider's cancel goes
    through at once, dispatch's commit then loses on the version, and it gives the driver
    it reserved back."""
    driver, rider = new_id("d"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.001, PICKUP[1]))
    # The service's own dispatcher cannot reach location and polls once an hour: the
    # dispatcher under test, on the same schema, makes the step.
    service = {**unreachable_location(), "dispatch_poll_s": 3600.0}
    settings = harness.trip_settings()
    async with harness.trip_service(**service) as stub:
        trip = await book(stub, rider)
        location = CancelWhileReserving(settings.location_addr, stub, rider)
        pool = await create_pool(harness.infra.postgres_dsn, schema=harness.schema)
        try:
            dispatcher = Dispatcher(TripStore(pool), location, settings)

            async def stepped() -> bool:
                await dispatcher.advance(trip.id)  # nothing while the service's step runs
                return bool(location.reserved)

            await eventually(stepped)
        finally:
            await pool.close()
            await location.close()
        done = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)

    assert location.reserved == [driver]
    assert done.state == pb.TRIP_STATE_CANCELLED
    assert [h.command for h in done.history] == ["request", "cancel"]
    assert not harness.tap.of(events.TRIP_OFFERED, trip.id)
    assert await harness.availability(driver) == loc.AVAILABILITY_AVAILABLE


@pytest.mark.parametrize("claim_s", [10.0, 1e-6], ids=["claimed", "claim-lapsed"])
async def test_two_dispatchers_on_one_trip_make_one_offer(harness: Harness, claim_s: float) -> None:
    """Two copies' dispatchers advance the same trips at once. With the claim, one of them
    works and the other leaves; with claims that lapse at once, both search and reserve, the
    version check lets one offer commit and the other copy gives its driver back."""
    drivers = [new_id("d") for _ in range(6)]
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, (PICKUP[0] + 0.0005 * (i + 1), PICKUP[1]))
    service = {**unreachable_location(), "dispatch_poll_s": 3600.0}
    settings = harness.trip_settings(dispatch_claim_s=claim_s)
    async with harness.trip_service(**service) as stub:
        trips = [await book(stub, new_id("r")) for _ in range(3)]
        locations = [LocationClient(settings.location_addr, timeout_s=5.0) for _ in range(2)]
        pool = await create_pool(harness.infra.postgres_dsn, schema=harness.schema)
        try:
            copies = [Dispatcher(TripStore(pool), location, settings) for location in locations]
            for trip in trips:

                async def offered(trip_id: str = trip.id) -> bool:
                    await asyncio.gather(*(copy.advance(trip_id) for copy in copies))
                    found = await stub.GetTrip(pb.GetTripRequest(trip_id=trip_id), timeout=5)
                    return found.HasField("current_offer")

                await eventually(offered)
        finally:
            await pool.close()
            for location in locations:
                await location.close()
        done = [await stub.GetTrip(pb.GetTripRequest(trip_id=t.id), timeout=5) for t in trips]
        held = [await harness.availability(d) == loc.AVAILABILITY_OFFERED for d in drivers]

    assert all([h.command for h in t.history] == ["request", "dispatch", "offer"] for t in done)
    assert sorted(t.current_offer.driver_id for t in done) == sorted(
        d for d, h in zip(drivers, held, strict=True) if h
    )
    assert sum(held) == 3


async def test_two_dispatchers_with_lapsing_claims_keep_a_trip_to_k_offers(
    harness: Harness,
) -> None:
    """Parallel offers (K = 3) and two copies whose claims lapse at once: both search and
    reserve a batch for the same trip; one batch commits, the other copy gives its drivers
    back, and no driver is offered two trips."""
    drivers = [new_id("d") for _ in range(9)]
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, (PICKUP[0] + 0.0005 * (i + 1), PICKUP[1]))
    service = {**unreachable_location(), "dispatch_poll_s": 3600.0}
    settings = harness.trip_settings(dispatch_claim_s=1e-6, parallel_offers=3)
    async with harness.trip_service(**service) as stub:
        trips = [await book(stub, new_id("r")) for _ in range(2)]
        locations = [LocationClient(settings.location_addr, timeout_s=5.0) for _ in range(2)]
        pool = await create_pool(harness.infra.postgres_dsn, schema=harness.schema)
        try:
            copies = [Dispatcher(TripStore(pool), location, settings) for location in locations]
            for trip in trips:

                async def offered(trip_id: str = trip.id) -> bool:
                    await asyncio.gather(*(copy.advance(trip_id) for copy in copies))
                    found = await stub.GetTrip(pb.GetTripRequest(trip_id=trip_id), timeout=5)
                    return bool(found.current_offers)

                await eventually(offered)
        finally:
            await pool.close()
            for location in locations:
                await location.close()
        done = [await stub.GetTrip(pb.GetTripRequest(trip_id=t.id), timeout=5) for t in trips]
        held = [await harness.availability(d) == loc.AVAILABILITY_OFFERED for d in drivers]

    offered_to = [o.driver_id for t in done for o in t.current_offers]
    for t in done:
        assert 1 <= len(t.current_offers) <= 3
        assert [h.command for h in t.history] == ["request", "dispatch"] + ["offer"] * len(
            t.current_offers
        )
    assert len(offered_to) == len(set(offered_to))
    assert sorted(offered_to) == sorted(d for d, h in zip(drivers, held, strict=True) if h)


# --- the boundary: malformed input, forged tokens, trips a caller may not see ---------------


async def test_a_malformed_id_in_any_request_is_invalid_argument_naming_the_field(
    harness: Harness,
) -> None:
    here, there = latlng(PICKUP), latlng(DROPOFF)
    async with harness.trip_service() as stub:
        for bad in [*BAD_IDS, ""]:
            calls: list[tuple[str, Awaitable[object]]] = [
                ("trip_id", stub.GetTrip(pb.GetTripRequest(trip_id=bad))),
                (
                    "actor_id",
                    stub.GetTrip(
                        pb.GetTripRequest(trip_id="t1", actor=pb.ACTOR_RIDER, actor_id=bad)
                    ),
                ),
                (
                    "rider_id",
                    stub.EstimateFare(
                        pb.EstimateFareRequest(
                            pickup=here, dropoff=there, vehicle_class=STANDARD, rider_id=bad
                        )
                    ),
                ),
                (
                    "quote_id",
                    stub.RequestTrip(
                        pb.RequestTripRequest(
                            rider_id="r1", quote_id=bad, pickup=here, dropoff=there
                        )
                    ),
                ),
                ("rider_id", stub.ListTrips(pb.ListTripsRequest(rider_id=bad))),
                ("driver_id", stub.ListTrips(pb.ListTripsRequest(driver_id=bad))),
                (
                    "trip_id",
                    stub.CancelTrip(
                        pb.CancelTripRequest(trip_id=bad, actor=pb.ACTOR_RIDER, actor_id="r1")
                    ),
                ),
                (
                    "driver_id",
                    stub.AcceptTrip(
                        pb.AcceptTripRequest(trip_id="t1", driver_id=bad, offer_id="o")
                    ),
                ),
                (
                    "offer_id",
                    stub.DeclineTrip(
                        pb.DeclineTripRequest(trip_id="t1", driver_id="d1", offer_id=bad)
                    ),
                ),
                (
                    "driver_id",
                    stub.ArriveAtPickup(pb.ArriveAtPickupRequest(trip_id="t1", driver_id=bad)),
                ),
                ("trip_id", stub.StartTrip(pb.StartTripRequest(trip_id=bad, driver_id="d1"))),
                (
                    "driver_id",
                    stub.CompleteTrip(pb.CompleteTripRequest(trip_id="t1", driver_id=bad)),
                ),
                (
                    "actor_id",
                    stub.RateTrip(
                        pb.RateTripRequest(
                            trip_id="t1", actor=pb.ACTOR_RIDER, actor_id=bad, stars=5
                        )
                    ),
                ),
            ]
            if bad:  # an absent actor_id is SYSTEM's; an empty filter is malformed
                calls.append(
                    (
                        "actor_id",
                        stub.CancelTrip(
                            pb.CancelTripRequest(trip_id="t1", actor=pb.ACTOR_SYSTEM, actor_id=bad)
                        ),
                    )
                )
            for field_name, call in calls:
                assert (await invalid_argument(call)).startswith(field_name), (bad, field_name)


@pytest.mark.parametrize("value", [0, -5, 42])
async def test_an_unspecified_or_unknown_enum_is_invalid_argument(
    harness: Harness, value: int
) -> None:
    here, there = latlng(PICKUP), latlng(DROPOFF)
    # An open proto3 enum carries any number: a client can send these.
    actor, state = pb.Actor.ValueType(value), pb.TripState.ValueType(value)
    klass = common_pb2.VehicleClass.ValueType(value)
    async with harness.trip_service() as stub:
        calls: list[Awaitable[object]] = [
            stub.CancelTrip(pb.CancelTripRequest(trip_id="t1", actor=actor, actor_id="r1")),
            stub.RateTrip(pb.RateTripRequest(trip_id="t1", actor=actor, actor_id="r1", stars=5)),
            stub.EstimateFare(
                pb.EstimateFareRequest(
                    pickup=here, dropoff=there, vehicle_class=klass, rider_id="r1"
                )
            ),
            stub.ListTrips(pb.ListTripsRequest(states=[state])),
        ]
        if value:  # an unspecified reader is a service reading for itself
            calls.append(stub.GetTrip(pb.GetTripRequest(trip_id="t1", actor=actor)))
        for call in calls:
            await invalid_argument(call)


async def test_every_forged_page_token_is_invalid_argument(harness: Harness) -> None:
    rider = new_id("r")
    scope = f"trip.trips:r={rider}:d=:s="
    async with harness.trip_service() as stub:
        await book(stub, rider)
        await book(stub, new_id("r"))
        real = await stub.ListTrips(pb.ListTripsRequest(page_size=1), timeout=5)
        assert real.next_page_token
        # a real token is good only for the filters that made it
        await invalid_argument(
            stub.ListTrips(
                pb.ListTripsRequest(rider_id=rider, page_token=real.next_page_token), timeout=5
            )
        )
        for token in forged_tokens(scope, ["2026-01-01T00:00:00+00:00", "t1"], by_time=True):
            await invalid_argument(
                stub.ListTrips(pb.ListTripsRequest(rider_id=rider, page_token=token), timeout=5)
            )
        for token in forged_tokens("trip.assignments", ["d1", "t1"], by_time=False):
            await invalid_argument(
                stub.ListActiveAssignments(
                    pb.ListActiveAssignmentsRequest(page_token=token), timeout=5
                )
            )


async def test_a_trip_hidden_from_a_caller_answers_exactly_like_a_missing_one(
    harness: Harness,
) -> None:
    driver, stranger, rider, other = new_id("d"), new_id("d"), new_id("r"), new_id("r")
    await harness.go_online(driver, (PICKUP[0] + 0.002, PICKUP[1]))
    async with harness.trip_service() as stub:
        trip = await book(stub, rider)
        offer = await offer_of(harness.tap, trip.id)
        missing = uuid.uuid4().hex

        async def answers(trip_id: str) -> dict[str, tuple[grpc.StatusCode, str | None]]:
            """What every read and command on ``trip_id`` answers the rider ``other`` and
            the driver ``stranger``, neither of whom is a party of the trip."""
            rider_, driver_ = pb.ACTOR_RIDER, pb.ACTOR_DRIVER
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "get as rider": lambda: stub.GetTrip(
                    pb.GetTripRequest(trip_id=trip_id, actor=rider_, actor_id=other)
                ),
                "get as driver": lambda: stub.GetTrip(
                    pb.GetTripRequest(trip_id=trip_id, actor=driver_, actor_id=stranger)
                ),
                "cancel as rider": lambda: stub.CancelTrip(
                    pb.CancelTripRequest(trip_id=trip_id, actor=rider_, actor_id=other)
                ),
                "cancel as driver": lambda: stub.CancelTrip(
                    pb.CancelTripRequest(trip_id=trip_id, actor=driver_, actor_id=stranger)
                ),
                "rate as rider": lambda: stub.RateTrip(
                    pb.RateTripRequest(trip_id=trip_id, actor=rider_, actor_id=other, stars=1)
                ),
                "accept": lambda: stub.AcceptTrip(
                    pb.AcceptTripRequest(
                        trip_id=trip_id, driver_id=stranger, offer_id=offer.offer_id
                    )
                ),
                "decline": lambda: stub.DeclineTrip(
                    pb.DeclineTripRequest(
                        trip_id=trip_id, driver_id=stranger, offer_id=offer.offer_id
                    )
                ),
                "arrive": lambda: stub.ArriveAtPickup(
                    pb.ArriveAtPickupRequest(trip_id=trip_id, driver_id=stranger)
                ),
                "start": lambda: stub.StartTrip(
                    pb.StartTripRequest(trip_id=trip_id, driver_id=stranger)
                ),
                "complete": lambda: stub.CompleteTrip(
                    pb.CompleteTripRequest(trip_id=trip_id, driver_id=stranger)
                ),
            }
            seen: dict[str, tuple[grpc.StatusCode, str | None]] = {}
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call()
                seen[name] = (caught.value.code(), caught.value.details())
            return seen

        absent = await answers(missing)
        assert set(absent.values()) == {(grpc.StatusCode.NOT_FOUND, "trip not found")}
        assert await answers(trip.id) == absent  # with the offer pending

        await stub.AcceptTrip(
            pb.AcceptTripRequest(trip_id=trip.id, driver_id=driver, offer_id=offer.offer_id),
            timeout=5,
        )
        assert await answers(trip.id) == absent  # with a driver on the way
        # and a party sees it
        for actor, actor_id in ((pb.ACTOR_RIDER, rider), (pb.ACTOR_DRIVER, driver)):
            seen = await stub.GetTrip(
                pb.GetTripRequest(trip_id=trip.id, actor=actor, actor_id=actor_id), timeout=5
            )
            assert seen.state == pb.TRIP_STATE_ACCEPTED
        before = seen.version
        # a party acting out of its state hears about the state
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await stub.CompleteTrip(pb.CompleteTripRequest(trip_id=trip.id, driver_id=driver))
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.CancelTrip(
            pb.CancelTripRequest(trip_id=trip.id, actor=pb.ACTOR_RIDER, actor_id=rider), timeout=5
        )
        after = await stub.GetTrip(pb.GetTripRequest(trip_id=trip.id), timeout=5)
    # none of the strangers' calls changed the trip: the rider's cancel is the one change
    assert (after.state, after.version) == (pb.TRIP_STATE_CANCELLED, before + 1)
