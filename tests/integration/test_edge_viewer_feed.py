"""/v1/ws/viewer over the real services: a snapshot of the box, then drivers appearing,
moving and leaving; the box follows the map; bad boxes and wrong roles are refused."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rideshare.settings import InfraUrls
from tests.integration.edge_system import System, edge_system
from tests.integration.test_edge import signup_driver, signup_rider

TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"t_{uuid.uuid4().hex[:8]}") as system:
        yield system


def box_around(lat: float, lng: float, d: float = 0.01) -> str:
    return f"{lat - d},{lng - d},{lat + d},{lng + d}"


async def report(http: httpx.AsyncClient, lat: float, lng: float) -> None:
    r = await http.post("/v1/drivers/me/position", json={"lat": lat, "lng": lng})
    assert r.status_code == 200 and r.json()["accepted"], r.text


async def frame_where(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            assert frame["type"] != "error", frame
            if match(frame):
                return frame


def has(driver_id: str, key: str) -> Callable[[dict[str, Any]], bool]:
    def match(f: dict[str, Any]) -> bool:
        if key == "left":
            return f["type"] == "viewer_delta" and driver_id in f["left"]
        return f["type"] == "viewer_delta" and any(d["driver_id"] == driver_id for d in f[key])

    return match


def spot() -> tuple[float, float]:
    """A place of this test's own, away from the drivers of other tests."""
    return -60.0 + random.random() * 20, -170.0 + random.random() * 20


async def test_a_viewer_gets_a_snapshot_then_drivers_appearing_moving_and_leaving(
    system: System,
) -> None:
    lat, lng = spot()
    first, first_token = await signup_driver(system, online=True)
    second, second_token = await signup_driver(system, online=True)
    async with system.client(first_token) as http:
        await report(http, lat, lng)
    url = f"{system.ws_url}/v1/ws/viewer?bbox={box_around(lat, lng)}&token={system.admin_token()}"
    async with (
        connect(url) as ws,
        system.client(first_token) as one,
        system.client(second_token) as two,
    ):
        snapshot = await frame_where(ws, lambda f: f["type"] == "viewer_snapshot")
        assert [d["driver_id"] for d in snapshot["drivers"]] == [first]
        assert snapshot["drivers"][0]["availability"] == "available"
        assert snapshot["truncated"] is False

        await report(two, lat + 0.001, lng)
        appeared = await frame_where(ws, has(second, "appeared"))
        assert appeared["appeared"][0]["lat"] == pytest.approx(lat + 0.001)

        await report(one, lat + 0.002, lng)
        moved = await frame_where(ws, has(first, "moved"))
        assert [d["lat"] for d in moved["moved"] if d["driver_id"] == first] == [
            pytest.approx(lat + 0.002)
        ]

        await report(one, lat + 0.5, lng)  # out of the box
        await frame_where(ws, has(first, "left"))


async def test_the_box_follows_the_map_and_positions_are_conflated(system: System) -> None:
    lat, lng = spot()
    driver, token = await signup_driver(system, online=True)
    async with system.client(token) as http:
        await report(http, lat, lng)
        elsewhere = box_around(lat + 1.0, lng)
        url = f"{system.ws_url}/v1/ws/viewer?bbox={elsewhere}&token={system.admin_token()}"
        async with connect(url) as ws:
            empty = await frame_where(ws, lambda f: f["type"] == "viewer_snapshot")
            assert driver not in [d["driver_id"] for d in empty["drivers"]]
            await ws.send(json.dumps({"type": "bbox", "bbox": box_around(lat, lng)}))
            snapshot = await frame_where(ws, lambda f: f["type"] == "viewer_snapshot")
            assert driver in [d["driver_id"] for d in snapshot["drivers"]]

            # Ten positions in a burst: the viewer gets the newest, in fewer frames.
            for i in range(1, 11):
                await report(http, lat + i * 1e-4, lng)
            frames = 0
            while True:
                frame = await frame_where(ws, has(driver, "moved"))
                frames += 1
                (latest,) = [d for d in frame["moved"] if d["driver_id"] == driver]
                if latest["lat"] == pytest.approx(lat + 10e-4):
                    break
            assert frames < 10

            await ws.send(json.dumps({"type": "bbox", "bbox": "1,2,3"}))
            error = json.loads(await ws.recv())
            assert error == {
                "type": "error",
                "code": "invalid_bbox",
                "message": "bbox must be four numbers minLat,minLng,maxLat,maxLng",
            }


@pytest.mark.parametrize(
    "bbox", ["nope", "10,10,5,5", "0,0,90,1", "0,-181,1,1", "1,2,3,4,5", "nan,1,2,3"]
)
async def test_a_bad_bbox_closes_the_viewer_with_4400(system: System, bbox: str) -> None:
    url = f"{system.ws_url}/v1/ws/viewer?bbox={bbox}&token={system.admin_token()}"
    async with connect(url) as ws:
        error = json.loads(await ws.recv())
        assert error["code"] == "invalid_bbox"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_the_viewer_is_for_admins(system: System) -> None:
    _, token = await signup_rider(system)
    async with connect(f"{system.ws_url}/v1/ws/viewer?token={token}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
