"""Windowed batch dispatch and ExplainDispatch, against real Postgres, Redis and NATS with an
in-process location service (the harness of test_trip.py)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from protos import events
from protos.trip.v1 import trip_pb2 as pb
from rideshare.identity import ACTING_USER_METADATA_KEY, AUTH_METADATA_KEY, User, mint_token
from rideshare.settings import process_secret
from tests.helpers import eventually, grpc_status
from tests.integration import test_trip
from tests.integration.test_trip import Harness, TripStub, book, new_id, offer_of

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
