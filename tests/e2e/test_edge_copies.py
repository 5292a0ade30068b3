"""Two separate edge processes on two ports over the e2e stack's services, as two copies behind
a load balancer: a rider whose socket is on edge A sees the trip and the live position of a
driver whose socket is on edge B; an idempotency key used on A is replayed by B; a token's
rate limit is one budget across both (all of it lives in Valkey, and live data travels on
core NATS subjects that every edge copy subscribes to)."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect

from rideshare.infra import free_port
from rideshare.supervisor import Supervisor
from tests.e2e.conftest import Stack
from tests.e2e.test_edge_flow import _admin, auth, driving, next_frame, signup, trip_in
from tests.helpers import eventually

BURST_PER_TOKEN = 12  # a token's budget, shared by the copies; refilled at 0.1/s


@dataclass
class Edge:
    url: str
    supervisor: Supervisor

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


@pytest.fixture(scope="module")
async def edges(stack: Stack) -> AsyncIterator[tuple[Edge, Edge]]:
    started: list[Edge] = []
    try:
        for _ in range(2):
            port = free_port()
            env = {
                **stack.env,
                "RIDESHARE_EDGE_PORT": str(port),
                "RIDESHARE_EDGE_WORKERS": "1",
                "RIDESHARE_RATE_PER_TOKEN": "0.1",
                "RIDESHARE_BURST_PER_TOKEN": str(BURST_PER_TOKEN),
            }
            supervisor = Supervisor(stack.infra, extra_env=env, ready_timeout_s=120.0)
            started.append(Edge(f"http://127.0.0.1:{port}", supervisor))
            await supervisor.start("edge")
        yield started[0], started[1]
    finally:
        for edge in started:
            await edge.supervisor.stop_all(grace_s=10.0)


async def test_a_rider_on_edge_a_sees_a_driver_on_edge_b_and_keys_are_shared(
    edges: tuple[Edge, Edge], stack: Stack
) -> None:
    a, b = edges
    lat, lng = -40.0 - random.random() * 5, 120.0 + random.random() * 5
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10.0) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10.0) as on_b,
    ):
        rider_id, rider_token = await signup(on_a, "rider", stripe_api_base=stack.stripe_api_base)
        driver_id, driver_token = await signup(on_b, "driver")
        v = await on_b.post(
            "/v1/drivers/me/vehicles",
            headers=auth(driver_token),
            json={
                "make": "Skoda",
                "model": "Octavia",
                "plate": f"W{uuid.uuid4().hex[:6]}",
                "seats": 4,
                "vehicle_class": "standard",
            },
        )
        assert v.status_code == 201, v.text
        online = await on_b.post("/v1/drivers/me/online", headers=auth(driver_token))
        assert online.status_code == 200, online.text

        async with (
            connect(f"{b.ws_url}/v1/ws/driver?token={driver_token}") as driver_ws,
            connect(f"{a.ws_url}/v1/ws/rider?token={rider_token}") as rider_ws,
            driving(driver_ws, lat + 0.001, lng),
        ):

            async def indexed() -> bool:
                r = await on_a.get(
                    "/v1/admin/drivers",
                    headers=auth(_admin(stack)),
                    params={"bbox": f"{lat - 0.01},{lng - 0.01},{lat + 0.01},{lng + 0.01}"},
                )
                return any(d["driver_id"] == driver_id for d in r.json()["drivers"])

            await eventually(indexed, timeout_s=30.0, every_s=0.2)
            quote = await on_a.post(
                "/v1/fare-estimates",
                headers=auth(rider_token),
                json={
                    "pickup": {"lat": lat, "lng": lng},
                    "dropoff": {"lat": lat + 0.03, "lng": lng + 0.02},
                },
            )
            assert quote.status_code == 201, quote.text
            q = quote.json()
            headers = {**auth(rider_token), "Idempotency-Key": uuid.uuid4().hex}
            body = {"quote_id": q["quote_id"], "pickup": q["pickup"], "dropoff": q["dropoff"]}
            booked = await on_a.post("/v1/trips", headers=headers, json=body)
            assert booked.status_code == 201, booked.text
            trip_id = booked.json()["id"]
            # The phone retries through the other copy: the same trip, replayed.
            again = await on_b.post("/v1/trips", headers=headers, json=body)
            assert again.status_code == 201, again.text
            assert again.json()["id"] == trip_id
            assert again.headers.get("Idempotent-Replayed") == "true"

            offer = await next_frame(
                driver_ws, lambda f: f["type"] == "offer" and f["trip_id"] == trip_id, 60.0
            )
            accepted = await on_b.post(
                f"/v1/trips/{trip_id}/accept",
                headers=auth(driver_token),
                json={"offer_id": offer["offer_id"]},
            )
            assert accepted.status_code == 200, accepted.text
            await next_frame(rider_ws, trip_in("accepted"), 60.0)
            seen = await next_frame(rider_ws, lambda f: f["type"] == "driver_position", 60.0)
            assert seen["driver_id"] == driver_id
            later = await next_frame(
                rider_ws,
                lambda f: f["type"] == "driver_position" and f["ts_ms"] > seen["ts_ms"],
                60.0,
            )
            assert later["lat"] > seen["lat"]  # the driver moves north, position by position
        assert rider_id


async def test_a_tokens_rate_limit_is_one_budget_across_the_edge_copies(
    edges: tuple[Edge, Edge], stack: Stack
) -> None:
    a, b = edges
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10.0) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10.0) as on_b,
    ):
        _, token = await signup(on_a, "rider")
        codes = []
        # Alternating copies: each copy alone would allow BURST_PER_TOKEN.
        for i in range(BURST_PER_TOKEN + 4):
            http = on_a if i % 2 == 0 else on_b
            r = await http.get("/v1/me/payment-methods", headers=auth(token))
            codes.append(r.status_code)
        assert codes[:BURST_PER_TOKEN] == [200] * BURST_PER_TOKEN, codes
        # The budget is spent on both copies at once (a slow host may refill one token).
        assert codes[BURST_PER_TOKEN:].count(429) >= 3, codes
