"""A whole trip through the edge only (HTTP + WebSocket), services as subprocesses: signup ->
online -> request -> offer on the driver socket -> accept -> the rider socket receives the
driver's positions -> arrive -> start -> complete -> rating; and who may do what."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from rideshare.simulate.cards import tokenize_card
from tests.e2e.conftest import Stack
from tests.helpers import eventually

PASSWORD = "correct-horse-battery"


def phone() -> str:
    return "+49152" + str(uuid.uuid4().int)[:8]


async def signup(
    http: httpx.AsyncClient, role: str, *, stripe_api_base: str = ""
) -> tuple[str, str]:
    """A new user's (id, token); a rider with a test card when ``stripe_api_base`` is given."""
    number = phone()
    body: dict[str, Any] = {"name": role.title(), "phone": number, "password": PASSWORD}
    if role == "driver":
        body["license_number"] = "B-123"
    r = await http.post(f"/v1/{role}s", json=body)
    assert r.status_code == 201, r.text
    t = await http.post(
        "/v1/auth/token", json={"phone": number, "password": PASSWORD, "role": role}
    )
    assert t.status_code == 200, t.text
    token = str(t.json()["access_token"])
    if stripe_api_base:
        card = await http.post(
            "/v1/me/payment-methods",
            headers=auth(token),
            json={"payment_method_id": await tokenize_card(stripe_api_base)},
        )
        assert card.status_code == 201, card.text
    return str(t.json()["user_id"]), token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def book_trip(http: httpx.AsyncClient, rider_token: str, lat: float, lng: float) -> str:
    """A quote from (lat, lng) to a point ~3 km away, booked at once; the trip's id."""
    quote = await http.post(
        "/v1/fare-estimates",
        headers=auth(rider_token),
        json={
            "pickup": {"lat": lat, "lng": lng},
            "dropoff": {"lat": lat + 0.03, "lng": lng + 0.02},
        },
    )
    assert quote.status_code == 201, quote.text
    q = quote.json()
    booked = await http.post(
        "/v1/trips",
        headers={**auth(rider_token), "Idempotency-Key": uuid.uuid4().hex},
        json={"quote_id": q["quote_id"], "pickup": q["pickup"], "dropoff": q["dropoff"]},
    )
    assert booked.status_code == 201, booked.text
    return str(booked.json()["id"])


async def next_frame(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
) -> dict[str, Any]:
    """The next frame that ``match`` accepts (others are skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if match(frame):
                return frame


@contextlib.asynccontextmanager
async def driving(ws: ClientConnection, lat: float, lng: float) -> AsyncIterator[None]:
    """Report a moving position every 0.3 s while the block runs, like a driver app."""

    async def loop() -> None:
        i = 0
        while True:
            i += 1
            await ws.send(
                json.dumps(
                    {
                        "type": "position",
                        "lat": lat + i * 1e-5,
                        "lng": lng,
                        "heading": 0.0,
                        "speed_mps": 6.0,
                        "accuracy_m": 5.0,
                        "ts_ms": time.time_ns() // 1_000_000,
                    }
                )
            )
            await asyncio.sleep(0.3)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_a_trip_from_signup_to_rating_through_the_edge(stack: Stack) -> None:
    # A pickup point of this test's own, far from drivers other tests left in the index.
    lat, lng = 10.0 + random.random() * 30, -60.0 + random.random() * 20
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=10.0) as http:
        rider_id, rider_token = await signup(http, "rider", stripe_api_base=stack.stripe_api_base)
        other_rider_id, other_rider_token = await signup(http, "rider")
        driver_id, driver_token = await signup(http, "driver")
        _, other_driver_token = await signup(http, "driver")

        v = await http.post(
            "/v1/drivers/me/vehicles",
            headers=auth(driver_token),
            json={
                "make": "Toyota",
                "model": "Prius",
                "plate": f"E2E{uuid.uuid4().hex[:5]}",
                "seats": 4,
                "vehicle_class": "standard",
            },
        )
        assert v.status_code == 201, v.text
        online = await http.post("/v1/drivers/me/online", headers=auth(driver_token))
        assert online.status_code == 200 and online.json()["status"] == "available", online.text

        async with (
            connect(f"{stack.ws_url}/v1/ws/driver?token={driver_token}") as driver_ws,
            connect(f"{stack.ws_url}/v1/ws/rider?token={rider_token}") as rider_ws,
            driving(driver_ws, lat + 0.001, lng),
        ):
            # the driver must be in the index before the rider asks
            async def indexed() -> bool:
                r = await http.get(
                    "/v1/admin/drivers",
                    headers=auth(_admin(stack)),
                    params={"bbox": f"{lat - 0.01},{lng - 0.01},{lat + 0.01},{lng + 0.01}"},
                )
                return any(d["driver_id"] == driver_id for d in r.json()["drivers"])

            await eventually(indexed, timeout_s=10.0)

            trip_id = await book_trip(http, rider_token, lat, lng)

            offer = await next_frame(
                driver_ws, lambda f: f["type"] == "offer" and f["trip_id"] == trip_id
            )
            assert offer["offer_id"] and offer["fare"]["amount_minor"] > 0

            # authz: the rider cannot accept; another driver cannot take this driver's offer;
            # another rider cannot see the trip
            as_rider = await http.post(
                f"/v1/trips/{trip_id}/accept",
                headers=auth(rider_token),
                json={"offer_id": offer["offer_id"]},
            )
            assert as_rider.status_code == 403
            as_other = await http.post(
                f"/v1/trips/{trip_id}/accept",
                headers=auth(other_driver_token),
                json={"offer_id": offer["offer_id"]},
            )
            # to anyone but its parties the trip is not there at all (not its state either)
            assert as_other.status_code == 404, as_other.text
            peek = await http.get(f"/v1/trips/{trip_id}", headers=auth(other_rider_token))
            assert peek.status_code == 404
            assert peek.json() == as_other.json()

            accepted = await http.post(
                f"/v1/trips/{trip_id}/accept",
                headers=auth(driver_token),
                json={"offer_id": offer["offer_id"]},
            )
            assert accepted.status_code == 200, accepted.text
            assert accepted.json()["state"] == "accepted"

            await next_frame(
                rider_ws,
                lambda f: f["type"] == "trip" and f["trip"]["state"] == "accepted",
            )
            position = await next_frame(rider_ws, lambda f: f["type"] == "driver_position")
            assert position["driver_id"] == driver_id
            assert abs(position["lng"] - lng) < 1e-6

            for command, state in (
                ("arrive", "arrived"),
                ("start", "in_progress"),
                ("complete", "completed"),
            ):
                r = await http.post(f"/v1/trips/{trip_id}/{command}", headers=auth(driver_token))
                assert r.status_code == 200, r.text
                assert r.json()["state"] == state
                await next_frame(rider_ws, trip_in(state))

        rated = await http.post(
            f"/v1/trips/{trip_id}/rating", headers=auth(rider_token), json={"stars": 5}
        )
        assert rated.status_code == 200, rated.text
        assert rated.json()["rider_rating"] == 5
        again = await http.post(
            f"/v1/trips/{trip_id}/rating", headers=auth(rider_token), json={"stars": 4}
        )
        assert again.status_code == 409
        mine = await http.get(f"/v1/trips/{trip_id}", headers=auth(rider_token))
        assert mine.json()["state"] == "completed"
        assert other_rider_id != rider_id

        # The fare is charged to the rider's card, and a receipt says so.
        receipts: list[dict[str, Any]] = []

        async def receipted() -> bool:
            r = await http.get("/v1/me/notifications", headers=auth(rider_token))
            receipts[:] = [n for n in r.json()["notifications"] if n["kind"] == "payment.receipt"]
            return bool(receipts)

        await eventually(receipted, timeout_s=60.0, every_s=0.5)
        fare = mine.json()["final_fare"]
        assert receipts[0]["trip_id"] == trip_id
        assert receipts[0]["data"]["amount_minor"] == str(fare["amount_minor"])
        assert receipts[0]["data"]["card_last4"] == "4242"
        assert "4242" in receipts[0]["body"]
        paid = await http.get(f"/v1/me/trips/{trip_id}/payments", headers=auth(rider_token))
        assert paid.status_code == 200, paid.text
        [payment] = paid.json()["payments"]
        assert (payment["kind"], payment["status"]) == ("fare", "succeeded")
        assert payment["amount"] == fare


def trip_in(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "trip" and f["trip"]["state"] == state


def _admin(stack: Stack) -> str:
    from edge.auth import issue_token

    return issue_token(stack.jwt_secret, sub="admin-e2e", role="admin", ttl_s=600)
