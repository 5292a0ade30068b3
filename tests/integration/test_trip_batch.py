"""Windowed batch dispatch and ExplainDispatch, against real Postgres, Redis and NATS with an
in-process location service (the harness of test_trip.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import REGISTRY

from protos import events
from protos.location.v1 import location_pb2 as loc
from protos.trip.v1 import trip_pb2 as pb
from rideshare.db import create_pool
from rideshare.identity import ACTING_USER_METADATA_KEY, AUTH_METADATA_KEY, User, mint_token
from rideshare.settings import process_secret
from tests.helpers import eventually, grpc_status
from tests.integration import test_trip
from tests.integration.test_trip import Harness, TripStub, book, new_id, offer_of
from trip import domain, wire
from trip.domain import DriverUnavailableError, Trip, TripState
from trip.explain import DispatchRound
from trip.store import TripStore
from trip.wire import Event

# The fixture `harness` of test_trip.py, registered here as `trip_harness`.
trip_harness = test_trip.harness

# Along a meridian 0.009 degrees of latitude are ~1 km.
KM = 0.009
BASE = (52.5000, 13.4000)


def north(km: float) -> tuple[float, float]:
    return (BASE[0] + km * KM, BASE[1])


def batch_settings(**overrides: object) -> dict[str, object]:
    # A window long enough for two bookings on a slow host, and one region for the city.
    values: dict[str, object] = {
        "dispatch_window_s": 3.0,
        "dispatch_region_res": 5,
        "radius_steps_m": (3000, 5000),
    }
    values.update(overrides)
    return values


async def two_trips_where_greedy_strands_the_second(
    harness: Harness, stub: TripStub
) -> tuple[str, str, str, str]:
    """Drivers at 0 and 1.8 km, trips at 1 and 2.6 km, booked in this order in one window.
    Nearest-first gives the first trip the driver at 1.8 km (0.8 km away) and the second the
    one at 0 km (2.6 km away): 3.4 km in all. The assignment: 1 + 0.8 = 1.8 km."""
    near_first, near_second = new_id("drv"), new_id("drv")
    await harness.go_online(near_first, north(0.0))
    await harness.go_online(near_second, north(1.8))
    first = await book(stub, new_id("rider"), north(1.0))
    second = await book(stub, new_id("rider"), north(2.6))
    return first.id, second.id, near_first, near_second


def admin_metadata() -> tuple[tuple[str, str], ...]:
    token = mint_token(process_secret(), service="edge", ttl_s=600)
    return (
        (AUTH_METADATA_KEY, f"Bearer {token}"),
        (ACTING_USER_METADATA_KEY, User("admin", new_id("admin")).header),
    )


async def test_two_requests_in_one_window_get_the_assignment_with_the_least_pickup_time(
    trip_harness: Harness,
) -> None:
    harness = trip_harness
    async with harness.trip_service(**batch_settings()) as stub:
        first, second, d_first, d_second = await two_trips_where_greedy_strands_the_second(
            harness, stub
        )
        assert (await offer_of(harness.tap, first)).driver_id == d_first
        assert (await offer_of(harness.tap, second)).driver_id == d_second

        explained = await stub.ExplainDispatch(pb.ExplainDispatchRequest(trip_id=first), timeout=5)
        (round_,) = explained.rounds
        assert (round_.round, round_.policy, round_.window_trips) == (1, "batch", 2)
        assert [(o.driver_id, o.outcome) for o in round_.offers] == [(d_first, "pending")]
        assert round_.outcome == "pending"
        assert [(c.driver_id, c.reason) for c in round_.candidates] == [(d_first, "assigned")]
        assert round_.candidates[0].distance_m == pytest.approx(1000, rel=0.02)
        assert round_.candidates[0].pickup_s == pytest.approx(1000 * 1.4 / (30 / 3.6), rel=0.02)
        assert [(c.driver_id, c.reason) for c in round_.excluded] == [
            (d_second, "offered_elsewhere")
        ]


async def test_a_window_too_big_to_solve_falls_back_to_nearest_first_and_counts_it(
    trip_harness: Harness,
) -> None:
    harness = trip_harness

    def fallbacks() -> float:
        value = REGISTRY.get_sample_value(
            "trip_dispatch_window_fallbacks_total", {"reason": "too_big"}
        )
        return value or 0.0

    before = fallbacks()
    async with harness.trip_service(**batch_settings(dispatch_max_pairs=1)) as stub:
        first, second, d_first, d_second = await two_trips_where_greedy_strands_the_second(
            harness, stub
        )
        offers = [await offer_of(harness.tap, first), await offer_of(harness.tap, second)]
        assert {o.driver_id for o in offers} == {d_first, d_second}
        assert fallbacks() - before == 2
        for trip_id in (first, second):
            explained = await stub.ExplainDispatch(
                pb.ExplainDispatchRequest(trip_id=trip_id), timeout=5
            )
            assert [(r.policy, r.window_trips) for r in explained.rounds] == [
                ("nearest_fallback", 1)
            ]


async def test_explain_dispatch_shows_every_round_and_how_each_ended(trip_harness: Harness) -> None:
    harness = trip_harness
    async with harness.trip_service(**batch_settings(dispatch_window_s=0.2)) as stub:
        near, far = new_id("drv"), new_id("drv")
        await harness.go_online(near, north(0.5))
        await harness.go_online(far, north(2.0))
        trip = await book(stub, new_id("rider"), north(0.0))
        offer = await offer_of(harness.tap, trip.id)
        assert offer.driver_id == near
        await stub.DeclineTrip(
            pb.DeclineTripRequest(trip_id=trip.id, driver_id=near, offer_id=offer.offer_id),
            timeout=5,
        )
        assert (await offer_of(harness.tap, trip.id, count=2)).driver_id == far

        explained = await stub.ExplainDispatch(
            pb.ExplainDispatchRequest(trip_id=trip.id), metadata=admin_metadata(), timeout=5
        )
        assert [
            (r.round, [o.driver_id for o in r.offers], r.outcome) for r in explained.rounds
        ] == [(1, [near], "declined"), (2, [far], "pending")]
        second = explained.rounds[1]
        assert (near, "declined_before") in [(c.driver_id, c.reason) for c in second.excluded]


async def test_explain_dispatch_is_for_admins_and_the_operator_only(trip_harness: Harness) -> None:
    harness = trip_harness
    async with harness.trip_service(**batch_settings(dispatch_window_s=0.2)) as stub:
        driver = new_id("drv")
        await harness.go_online(driver, north(0.5))
        rider = new_id("rider")
        trip = await book(stub, rider, north(0.0))
        await offer_of(harness.tap, trip.id)
        token = mint_token(process_secret(), service="edge", ttl_s=600)
        for user in (User("rider", rider), User("driver", driver)):
            metadata = (
                (AUTH_METADATA_KEY, f"Bearer {token}"),
                (ACTING_USER_METADATA_KEY, user.header),
            )
            call = stub.ExplainDispatch(
                pb.ExplainDispatchRequest(trip_id=trip.id), metadata=metadata, timeout=5
            )
            assert await grpc_status(call) == grpc.StatusCode.PERMISSION_DENIED
        missing = stub.ExplainDispatch(pb.ExplainDispatchRequest(trip_id=new_id("trip")), timeout=5)
        assert await grpc_status(missing) == grpc.StatusCode.NOT_FOUND
        bad = stub.ExplainDispatch(pb.ExplainDispatchRequest(trip_id="../x"), timeout=5)
        assert await grpc_status(bad) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_trip_without_any_driver_in_reach_ends_no_drivers_with_its_round(
    trip_harness: Harness,
) -> None:
    harness = trip_harness
    async with harness.trip_service(**batch_settings(dispatch_window_s=0.2)) as stub:
        await harness.go_online(new_id("drv"), north(20.0))  # outside every radius
        trip = await book(stub, new_id("rider"), north(0.0))
        await harness.tap.wait_for(events.TRIP_NO_DRIVERS, trip.id)

        async def recorded() -> bool:
            explained = await stub.ExplainDispatch(
                pb.ExplainDispatchRequest(trip_id=trip.id), timeout=5
            )
            return [r.outcome for r in explained.rounds] == ["no_drivers"]

        await eventually(recorded)


async def test_a_windows_offers_are_held_in_one_call_and_committed_in_one_transaction(
    trip_harness: Harness,
) -> None:
    harness = trip_harness
    drivers = [new_id("drv") for _ in range(8)]
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, north(0.3 * i))
    async with harness.trip_service(**batch_settings()) as stub:
        trips = [await book(stub, new_id("rider"), north(0.3 * i + 0.1)) for i in range(8)]
        offers = [await offer_of(harness.tap, t.id) for t in trips]
        assert sorted(o.driver_id for o in offers) == sorted(drivers)  # each driver once
        for driver in drivers:
            await harness.becomes(driver, loc.AVAILABILITY_OFFERED)
        pool = await create_pool(harness.infra.postgres_dsn, schema=harness.schema, max_size=1)
        try:
            # Rows written by one transaction share its id.
            writers = await pool.fetchval(
                "SELECT count(DISTINCT xmin::text) FROM offers WHERE trip_id = ANY($1::text[])",
                [t.id for t in trips],
            )
        finally:
            await pool.close()
        assert writers == 1
        explained = await stub.ExplainDispatch(pb.ExplainDispatchRequest(trip_id=trips[0].id))
        assert [(r.policy, r.window_trips) for r in explained.rounds] == [("batch", 8)]


async def test_first_offers_of_a_window_skip_a_trip_that_changed_and_write_nothing_on_a_refusal(
    trip_harness: Harness,
) -> None:
    harness = trip_harness
    # A window far longer than the test: the service books the trips but never dispatches
    # them, so the store is driven here.
    async with harness.trip_service(**batch_settings(dispatch_window_s=600.0)) as stub:
        booked = [await book(stub, new_id("rider"), north(0.2 * i)) for i in range(3)]
        pool = await create_pool(harness.infra.postgres_dsn, schema=harness.schema, max_size=2)
        try:
            store = TripStore(pool)
            now = datetime.now(UTC)
            claimed = await store.claim_many_for_dispatch(
                [t.id for t in booked], claim="c1", now=now, until=now + timedelta(seconds=30)
            )
            assert sorted(t.id for t in claimed) == sorted(t.id for t in booked)
            again = await store.claim_many_for_dispatch(
                [t.id for t in booked], claim="c2", now=now, until=now + timedelta(seconds=30)
            )
            assert again == []  # claimed by c1 until then
            by_id = {t.id: t for t in claimed}
            trips = [by_id[t.id] for t in booked]
            drivers = [new_id("drv") for _ in trips]

            def change(trip: Trip, driver: str) -> tuple[Trip, Trip, Event, DispatchRound]:
                dispatching = domain.dispatch(trip, now=now)
                offer_id = new_id("off")
                offered = domain.offer(dispatching, offer_id=offer_id, driver_id=driver, now=now)
                event = wire.offered(offered, distance_to_pickup_m=100.0)
                round_ = DispatchRound("batch", len(trips), (), (), ((driver, offer_id),))
                return trip, offered, event, round_

            # Another driver's offer taken by the first trip's: the unique index refuses it.
            refused = [change(trips[0], drivers[0]), change(trips[1], drivers[0])]
            with pytest.raises(DriverUnavailableError):
                await store.save_first_offers(refused, at=now)
            for trip in trips:
                assert (await store.find_trip(trip.id)) == trip  # nothing was written

            # The third trip changes under the window (here: its version moves on).
            await pool.execute("UPDATE trips SET version = version + 1 WHERE id = $1", trips[2].id)
            written = await store.save_first_offers(
                [change(t, d) for t, d in zip(trips, drivers, strict=True)], at=now
            )
            assert written == {trips[0].id, trips[1].id}
            for trip, driver in zip(trips[:2], drivers[:2], strict=True):
                found = await store.find_trip(trip.id)
                assert found is not None and found.state is TripState.DISPATCHING
                assert [o.driver_id for o in found.offers] == [driver]
            third = await store.find_trip(trips[2].id)
            assert (
                third is not None and third.offers == () and third.version == trips[2].version + 1
            )
            outbox = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE subject = $1 AND aggregate_id = ANY($2::text[])",
                events.TRIP_OFFERED,
                [t.id for t in trips],
            )
            assert outbox == 2
            rounds = await pool.fetch(
                "SELECT trip_id, round FROM dispatch_rounds WHERE trip_id = ANY($1::text[])",
                [t.id for t in trips],
            )
            assert sorted((r["trip_id"], r["round"]) for r in rounds) == sorted(
                (t.id, 1) for t in trips[:2]
            )
        finally:
            await pool.close()


async def test_a_burst_of_requests_over_many_short_windows_gets_every_trip_offered(
    trip_harness: Harness,
) -> None:
    harness = trip_harness
    drivers = [new_id("drv") for _ in range(24)]
    for i, driver in enumerate(drivers):
        await harness.go_online(driver, north(0.2 * i))
    async with harness.trip_service(**batch_settings(dispatch_window_s=0.03)) as stub:
        # Booked side by side: the kicks land while windows open and close.
        trips = await asyncio.gather(
            *(book(stub, new_id("rider"), north(0.2 * i + 0.05)) for i in range(24))
        )
        offers = [await offer_of(harness.tap, t.id) for t in trips]
        assert sorted(o.driver_id for o in offers) == sorted(drivers)
