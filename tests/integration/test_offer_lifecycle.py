"""Every way an offer ends reaches the driver's socket exactly once, with its reason.

The whole system behind a real edge, drivers on real WebSockets: an offer declined, left to
expire, ended by the rider's or an admin's cancel, by its driver going offline, by the
dispatch backstop giving the trip up, and (parallel offers) by another driver's accept. For
each, one ``trip.offer_ended`` event and one ``offer_ended`` frame; a redelivered event sends
no second frame. Parallel offers: a decline leaves the batch's other offers standing, and when
all of them have ended the next drivers get theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection, connect

from protos import events
from protos.trip.v1 import events_pb2 as trip_events
from rideshare import bus
from rideshare.settings import InfraUrls
from tests.helpers import eventually, publish_event
from tests.integration.edge_system import System, edge_system
from tests.integration.test_edge import signup_driver, signup_rider

PARALLEL = 3
OFFER_TIMEOUT_S = 12.0
FRAME_WAIT_S = 30.0  # the machine is shared: generous deadlines, never a tight one
QUIET_S = 1.5  # how long a socket is watched for a duplicate after its one frame


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(
        infra,
        f"t_{uuid.uuid4().hex[:8]}",
        parallel_offers=PARALLEL,
        offer_timeout_s=OFFER_TIMEOUT_S,
        dispatch_poll_s=0.1,
    ) as system:
        yield system


@dataclass
class Ended:
    """The trip.offer_ended events published while a test runs, by offer id."""

    by_offer: dict[str, list[trip_events.TripOfferEnded]] = field(default_factory=dict)

    async def on_msg(self, msg: Msg) -> None:
        envelope = bus.decode_envelope(msg.data)
        event = envelope.unpack(trip_events.TripOfferEnded)
        self.by_offer.setdefault(event.offer_id, []).append(event)


@contextlib.asynccontextmanager
async def ended_events(system: System) -> AsyncIterator[tuple[Ended, NATS]]:
    nc = await bus.connect(system.infra.nats_url, name=f"test-offers-{uuid.uuid4().hex[:6]}")
    try:
        tap = Ended()
        await nc.subscribe(events.TRIP_OFFER_ENDED, cb=tap.on_msg)
        await nc.flush(timeout=5)
        yield tap, nc
    finally:
        await nc.close()


def somewhere() -> tuple[float, float]:
    """A pickup of the test's own, far from every driver other tests left in the index."""
    return random.uniform(10.0, 40.0), random.uniform(100.0, 150.0)


@dataclass
class Driver:
    id: str
    token: str
    ws: ClientConnection
    http: httpx.AsyncClient


async def next_frame(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` (others are passed over)."""
    async with asyncio.timeout(FRAME_WAIT_S):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def frames_within(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every frame but pings that arrives within ``seconds``."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] != "ping":
                    seen.append(frame)
    return seen


@contextlib.asynccontextmanager
async def drivers_near(
    system: System, pickup: tuple[float, float], count: int
) -> AsyncIterator[list[Driver]]:
    """``count`` online drivers with open sockets, 100 m apart going north of ``pickup``
    (the first nearest), each shown available by the location service."""
    async with contextlib.AsyncExitStack() as stack:
        drivers = []
        for i in range(count):
            driver_id, token = await signup_driver(system, online=True)
            ws = await stack.enter_async_context(
                connect(f"{system.ws_url}/v1/ws/driver?token={token}")
            )
            http = await stack.enter_async_context(system.client(token))
            await ws.send(
                json.dumps(
                    {
                        "type": "position",
                        "lat": pickup[0] + 0.0009 * (i + 1),
                        "lng": pickup[1],
                        "accuracy_m": 5,
                        "ts_ms": time.time_ns() // 1_000_000,
                    }
                )
            )
            drivers.append(Driver(driver_id, token, ws, http))
        admin = await stack.enter_async_context(system.client(system.admin_token()))
        lat, lng = pickup

        async def all_available() -> bool:
            r = await admin.get(
                "/v1/admin/drivers",
                params={"bbox": f"{lat - 0.05},{lng - 0.05},{lat + 0.05},{lng + 0.05}"},
            )
            shown = {
                d["driver_id"] for d in r.json()["drivers"] if d["availability"] == "available"
            }
            return all(d.id in shown for d in drivers)

        await eventually(all_available, timeout_s=FRAME_WAIT_S, every_s=0.2)
        yield drivers


async def book(system: System, rider_token: str, pickup: tuple[float, float]) -> str:
    async with system.client(rider_token) as rider:
        point = {"lat": pickup[0], "lng": pickup[1]}
        q = await rider.post(
            "/v1/fare-estimates",
            json={"pickup": point, "dropoff": {"lat": pickup[0] + 0.02, "lng": pickup[1]}},
        )
        assert q.status_code == 201, q.text
        quote = q.json()
        booked = await rider.post(
            "/v1/trips",
            json={
                "quote_id": quote["quote_id"],
                "pickup": quote["pickup"],
                "dropoff": quote["dropoff"],
            },
        )
        assert booked.status_code == 201, booked.text
        return str(booked.json()["id"])


async def trip_state(system: System, trip_id: str) -> str:
    async with system.client(system.admin_token()) as admin:
        r = await admin.get(f"/v1/trips/{trip_id}")
        assert r.status_code == 200, r.text
        return str(r.json()["state"])


async def ends_once(
    tap: Ended, driver: Driver, offer: dict[str, Any], reason: str
) -> dict[str, Any]:
    """The offer's one offer_ended frame with ``reason``, and exactly one event for it."""
    frame = await next_frame(driver.ws, "offer_ended")
    assert (frame["trip_id"], frame["offer_id"], frame["reason"]) == (
        offer["trip_id"],
        offer["offer_id"],
        reason,
    )
    later = await frames_within(driver.ws, QUIET_S)
    assert not [f for f in later if f["type"] == "offer_ended"], later
    await eventually(lambda: offer["offer_id"] in tap.by_offer, timeout_s=FRAME_WAIT_S)
    assert len(tap.by_offer[offer["offer_id"]]) == 1
    return frame


# -- one driver offered: each way the offer ends ------------------------------------------


async def test_a_declined_offer_ends_once_as_declined(system: System) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with ended_events(system) as (tap, _nc), drivers_near(system, pickup, 1) as [driver]:
        trip_id = await book(system, rider, pickup)
        offer = await next_frame(driver.ws, "offer")
        assert offer["trip_id"] == trip_id
        r = await driver.http.post(
            f"/v1/trips/{trip_id}/decline", json={"offer_id": offer["offer_id"]}
        )
        assert r.status_code == 204, r.text
        await ends_once(tap, driver, offer, "declined")


async def test_an_unanswered_offer_ends_once_as_expired_and_the_trip_is_given_up(
    system: System,
) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with ended_events(system) as (tap, _nc), drivers_near(system, pickup, 1) as [driver]:
        trip_id = await book(system, rider, pickup)
        offer = await next_frame(driver.ws, "offer")
        await ends_once(tap, driver, offer, "expired")
        # The only driver let it lapse: nobody is left, and giving up ends no offer twice.
        await eventually(
            lambda: _is(system, trip_id, "no_drivers"), timeout_s=FRAME_WAIT_S, every_s=0.2
        )
        assert list(tap.by_offer) == [offer["offer_id"]]


async def _is(system: System, trip_id: str, state: str) -> bool:
    return await trip_state(system, trip_id) == state


@pytest.mark.parametrize("by", ["rider", "admin"])
async def test_a_cancel_before_acceptance_ends_the_offer_once_as_trip_cancelled(
    system: System, by: str
) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with ended_events(system) as (tap, _nc), drivers_near(system, pickup, 1) as [driver]:
        trip_id = await book(system, rider, pickup)
        offer = await next_frame(driver.ws, "offer")
        token = rider if by == "rider" else system.admin_token()
        async with system.client(token) as http:
            r = await http.post(f"/v1/trips/{trip_id}/cancel", json={"reason": "changed plans"})
        assert r.status_code == 200, r.text
        await ends_once(tap, driver, offer, "trip_cancelled")


async def test_a_driver_going_offline_ends_their_offer_once(system: System) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with ended_events(system) as (tap, _nc), drivers_near(system, pickup, 1) as [driver]:
        await book(system, rider, pickup)
        offer = await next_frame(driver.ws, "offer")
        r = await driver.http.post("/v1/drivers/me/offline")
        assert r.status_code == 200, r.text
        await ends_once(tap, driver, offer, "driver_offline")


async def test_a_redelivered_offer_ended_event_sends_no_second_frame(system: System) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with ended_events(system) as (tap, nc), drivers_near(system, pickup, 1) as [driver]:
        trip_id = await book(system, rider, pickup)
        offer = await next_frame(driver.ws, "offer")
        r = await driver.http.post(
            f"/v1/trips/{trip_id}/decline", json={"offer_id": offer["offer_id"]}
        )
        assert r.status_code == 204, r.text
        await next_frame(driver.ws, "offer_ended")
        await eventually(lambda: offer["offer_id"] in tap.by_offer, timeout_s=FRAME_WAIT_S)
        first = tap.by_offer[offer["offer_id"]][0]
        js = nc.jetstream(timeout=5)
        # What the relay sends when it dies between publishing and marking the row sent.
        await publish_event(js, events.TRIP_OFFER_ENDED, first, aggregate_id=trip_id, version=99)
        # Then another offer's end: the edge handles events in order, so the next frame the
        # driver gets is this one unless the copy got through.
        marker = trip_events.TripOfferEnded(
            trip_id=trip_id,
            offer_id=uuid.uuid4().hex,
            driver_id=driver.id,
            reason=trip_events.OFFER_END_REASON_EXPIRED,
        )
        await publish_event(js, events.TRIP_OFFER_ENDED, marker, aggregate_id=trip_id, version=100)
        frame = await next_frame(driver.ws, "offer_ended")
        assert frame["offer_id"] == marker.offer_id


# -- parallel offers ------------------------------------------------------------------------


async def test_parallel_offers_the_first_accept_wins_and_the_others_end_at_once(
    system: System,
) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with (
        ended_events(system) as (tap, _nc),
        drivers_near(system, pickup, PARALLEL) as drivers,
    ):
        trip_id = await book(system, rider, pickup)
        offers = [await next_frame(d.ws, "offer") for d in drivers]
        assert {o["trip_id"] for o in offers} == {trip_id}
        assert len({o["offer_id"] for o in offers}) == PARALLEL
        # Each offered driver sees the trip with their own offer only.
        seen = await drivers[1].http.get(f"/v1/trips/{trip_id}")
        assert [o["driver_id"] for o in seen.json()["current_offers"]] == [drivers[1].id]
        winner, *others = drivers
        r = await winner.http.post(
            f"/v1/trips/{trip_id}/accept", json={"offer_id": offers[0]["offer_id"]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["driver_id"] == winner.id
        for driver, offer in zip(others, offers[1:], strict=True):
            await ends_once(tap, driver, offer, "accepted_elsewhere")
            late = await driver.http.post(
                f"/v1/trips/{trip_id}/accept", json={"offer_id": offer["offer_id"]}
            )
            assert late.status_code in (404, 409), late.text
        won = await frames_within(winner.ws, QUIET_S)
        assert not [f for f in won if f["type"] == "offer_ended"], won
        assert offers[0]["offer_id"] not in tap.by_offer


async def test_parallel_offers_a_decline_leaves_the_others_and_the_next_batch_follows(
    system: System,
) -> None:
    pickup = somewhere()
    _, rider = await signup_rider(system)
    async with (
        ended_events(system) as (tap, _nc),
        drivers_near(system, pickup, PARALLEL + 1) as drivers,
    ):
        first, last = drivers[:PARALLEL], drivers[PARALLEL]
        trip_id = await book(system, rider, pickup)
        offers = [await next_frame(d.ws, "offer") for d in first]
        for driver, offer in zip(first[:-1], offers[:-1], strict=True):
            r = await driver.http.post(
                f"/v1/trips/{trip_id}/decline", json={"offer_id": offer["offer_id"]}
            )
            assert r.status_code == 204, r.text
            await ends_once(tap, driver, offer, "declined")
        # The batch's last offer still stands, and nobody else was offered the trip yet.
        assert not [f for f in await frames_within(first[-1].ws, QUIET_S) if "offer" in f["type"]]
        assert not [f for f in await frames_within(last.ws, 0.1) if f["type"] == "offer"]
        r = await first[-1].http.post(
            f"/v1/trips/{trip_id}/decline", json={"offer_id": offers[-1]["offer_id"]}
        )
        assert r.status_code == 204, r.text
        await ends_once(tap, first[-1], offers[-1], "declined")
        next_offer = await next_frame(last.ws, "offer")
        assert next_offer["trip_id"] == trip_id
        assert next_offer["attempt"] == PARALLEL + 1
        r = await last.http.post(
            f"/v1/trips/{trip_id}/accept", json={"offer_id": next_offer["offer_id"]}
        )
        assert r.status_code == 200, r.text


# -- the dispatch backstop --------------------------------------------------------------------


async def test_a_trip_given_up_by_the_backstop_ends_its_offer_once_as_trip_ended(
    infra: InfraUrls,
) -> None:
    """Dispatch never comes back to the trip (its poller sleeps for an hour, as a stalled
    one would): the sweeper's dispatch limit ends the trip, and with it the lapsed offer."""
    async with edge_system(
        infra,
        f"t_{uuid.uuid4().hex[:8]}",
        offer_timeout_s=1.0,
        max_wait_s=1.0,
        dispatch_limit_s=3.0,
        dispatch_poll_s=3600.0,
        sweep_poll_s=0.5,
    ) as system:
        pickup = somewhere()
        _, rider = await signup_rider(system)
        async with (
            ended_events(system) as (tap, _nc),
            drivers_near(system, pickup, 1) as [driver],
        ):
            trip_id = await book(system, rider, pickup)
            offer = await next_frame(driver.ws, "offer")
            await ends_once(tap, driver, offer, "trip_ended")
            assert await trip_state(system, trip_id) == "no_drivers"
