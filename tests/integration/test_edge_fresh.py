"""Positions stay fresh when the edge cannot forward them as fast as they come: the rider
sees the driver's newest position after a backlog, never a queue of old ones (latest-wins
conflation in edge/positions.py, location's ingest and the rider's socket)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.edge_system import BERLIN, System, edge_system
from tests.integration.test_edge import recv_json, signup_driver, signup_rider

# The batcher of the slow edge writes at most one batch every this many seconds.
SLOW_FLUSH_S = 3.0


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"t_{uuid.uuid4().hex[:8]}") as system:
        yield system


def position(lat: float, lng: float, ts_ms: int) -> str:
    return json.dumps(
        {"type": "position", "lat": lat, "lng": lng, "heading": 0, "speed_mps": 5, "ts_ms": ts_ms}
    )


async def accepted_trip(
    system: System, edge_url: str, driver_ws: ClientConnection, driver_token: str, at: Any
) -> str:
    """The rider's token of a trip the driver on ``driver_ws`` accepted."""
    _, rider_token = await signup_rider(system)
    lat, lng = at
    async with (
        httpx.AsyncClient(
            base_url=edge_url, headers={"Authorization": f"Bearer {rider_token}"}, timeout=10
        ) as rider,
        httpx.AsyncClient(
            base_url=edge_url, headers={"Authorization": f"Bearer {driver_token}"}, timeout=10
        ) as driver,
    ):
        q = await rider.post(
            "/v1/fare-estimates",
            json={"pickup": {"lat": lat, "lng": lng}, "dropoff": {"lat": lat + 0.01, "lng": lng}},
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
        async with asyncio.timeout(30.0):
            while (offer := await recv_json(driver_ws))["type"] != "offer":
                pass
        accepted = await driver.post(
            f"/v1/trips/{offer['trip_id']}/accept", json={"offer_id": offer["offer_id"]}
        )
        assert accepted.status_code == 200, accepted.text
    return rider_token


async def test_after_a_backlog_the_rider_gets_the_newest_position_not_the_old_ones(
    system: System,
) -> None:
    """An edge whose batcher writes to location once every few seconds (a stand-in for an
    edge that cannot keep up): the driver reports five positions within one interval; the
    rider's socket then shows the newest, and none of the four it superseded."""
    lat, lng = BERLIN[0] + 0.7, BERLIN[1] - 0.3  # away from other tests' drivers
    driver_id, driver_token = await signup_driver(system, online=True)
    async with system.another_edge(position_flush_s=SLOW_FLUSH_S) as edge:
        ws_url = edge.url.replace("http://", "ws://")
        async with connect(f"{ws_url}/v1/ws/driver?token={driver_token}") as driver_ws:
            start_ms = time.time_ns() // 1_000_000
            await driver_ws.send(position(lat, lng, start_ms))

            async def indexed() -> bool:
                async with system.client(system.admin_token()) as admin:
                    r = await admin.get(
                        "/v1/admin/drivers",
                        params={"bbox": f"{lat - 0.01},{lng - 0.01},{lat + 0.01},{lng + 0.01}"},
                    )
                return any(d["driver_id"] == driver_id for d in r.json()["drivers"])

            await eventually(indexed, timeout_s=20.0)
            rider_token = await accepted_trip(system, edge.url, driver_ws, driver_token, (lat, lng))
            async with connect(f"{ws_url}/v1/ws/rider?token={rider_token}") as rider_ws:
                seen: list[int] = []

                async def positions_until(ts_ms: int) -> None:
                    async with asyncio.timeout(30.0):
                        while not seen or seen[-1] < ts_ms:
                            frame = json.loads(await rider_ws.recv())
                            if frame["type"] == "driver_position":
                                assert frame["driver_id"] == driver_id
                                seen.append(frame["ts_ms"])

                await positions_until(start_ms)  # the snapshot
                conflated_before = await metric(edge.url, "edge_positions_conflated_total")
                # The first report after a quiet spell is written at once; the next ones
                # wait out the interval behind it, each superseding the one before.
                first = start_ms + 1_000
                await driver_ws.send(position(lat + 0.0001, lng, first))
                backlog = [first + 100 * i for i in range(1, 6)]
                for i, ts in enumerate(backlog, start=2):
                    await driver_ws.send(position(lat + 0.0001 * i, lng, ts))
                await positions_until(backlog[-1])
                conflated = await metric(edge.url, "edge_positions_conflated_total")
    after = [ts for ts in seen if ts > start_ms]
    assert after[-1] == backlog[-1]
    assert not set(after) & set(backlog[:-1]), f"old positions reached the rider: {after}"
    assert after == sorted(after)
    # The batcher itself kept the newest: four positions never left the edge.
    assert conflated - conflated_before >= 4


async def metric(url: str, name: str) -> float:
    """A counter's value on the edge's /metrics (shared by every edge in this process)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))
