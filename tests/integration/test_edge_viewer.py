"""The live map viewer in headless Chromium: a driver reported through the API appears, and
moves on the canvas as it reports, fed by the viewer WebSocket with no REST polling of the
drivers (the page is driven over the DevTools protocol, which also lists its requests).

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped, with that reason,
only when the binary is absent. The screenshot is kept in artifacts/edge-viewer.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.edge_system import System, edge_system
from tests.integration.test_edge import signup_driver

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium"
)


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"t_{uuid.uuid4().hex[:8]}") as system:
        yield system


async def chromium(*args: str, timeout_s: float = 60.0) -> str:
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1024,768",
        "--virtual-time-budget=4000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return out.decode()


async def test_admin_viewer_shows_a_driver_reported_through_the_api(system: System) -> None:
    driver_id, token = await signup_driver(system, online=True)
    lat, lng = -33.8688 + (uuid.uuid4().int % 1000) * 1e-5, 151.2093  # away from other tests
    async with system.client(token) as http:
        r = await http.post("/v1/drivers/me/position", json={"lat": lat, "lng": lng, "heading": 45})
        assert r.status_code == 200 and r.json()["accepted"], r.text
    bbox = f"{lat - 0.05},{lng - 0.05},{lat + 0.05},{lng + 0.05}"
    url = f"{system.url}/viewer?bbox={bbox}#token={system.admin_token()}"

    dom = await chromium("--dump-dom", url)
    assert re.search(r'<body[^>]*data-state="ready"', dom), dom[:2000]
    assert f'data-driver-id="{driver_id}"' in dom
    assert 'data-availability="available"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "edge-viewer.png"
    shot.unlink(missing_ok=True)
    await chromium(f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 1000


class DevTools:
    """One page of a headless Chromium, over the DevTools protocol: commands, and the URLs of
    every request the page made."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []

    async def read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message and message["id"] in self._waiting:
                self._waiting.pop(message["id"]).set_result(message)
            elif message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        key = next(self._ids)
        future = self._waiting[key] = asyncio.get_running_loop().create_future()
        await self._ws.send(json.dumps({"id": key, "method": method, "params": params}))
        async with asyncio.timeout(30.0):
            reply = await future
        assert "error" not in reply, reply
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def devtools_page() -> AsyncIterator[DevTools]:
    assert CHROMIUM is not None
    # Chromium's helper processes may still write the profile as it is removed.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1024,768",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            await eventually(active.exists, timeout_s=60.0, every_s=0.1)
            await eventually(lambda: len(active.read_text().splitlines()) >= 2, timeout_s=10.0)
            port = int(active.read_text().splitlines()[0])
            async with httpx.AsyncClient(timeout=10.0) as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            page = next(t for t in targets if t["type"] == "page")
            async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                tools = DevTools(ws)
                reader = asyncio.create_task(tools.read())
                try:
                    await tools.call("Network.enable")
                    await tools.call("Runtime.enable")
                    yield tools
                finally:
                    reader.cancel()
        finally:
            process.terminate()  # its helper processes go with it
            try:
                async with asyncio.timeout(10.0):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def area_requests(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("edge_http_requests_total{") and 'route="/v1/admin/drivers"' in line
    )


async def test_drivers_move_on_the_admin_map_with_no_rest_polling(system: System) -> None:
    driver_id, token = await signup_driver(system, online=True)
    lat, lng = 35.6762 + (uuid.uuid4().int % 1000) * 1e-5, 139.6503  # away from other tests
    bbox = f"{lat - 0.02},{lng - 0.02},{lat + 0.02},{lng + 0.02}"
    url = f"{system.url}/viewer?bbox={bbox}#token={system.admin_token()}"
    marker = f"document.querySelector('li[data-driver-id=\"{driver_id}\"]')"
    async with system.client(token) as http, devtools_page() as page:
        r = await http.post("/v1/drivers/me/position", json={"lat": lat, "lng": lng})
        assert r.status_code == 200 and r.json()["accepted"], r.text
        before = area_requests((await http.get("/metrics")).text)
        await page.call("Page.navigate", url=url)

        async def drawn() -> list[float] | None:
            where = await page.evaluate(
                f"(() => {{ const li = {marker}; "
                "return li && li.dataset.x ? [+li.dataset.lat, +li.dataset.x, +li.dataset.y] "
                ": null; })()"
            )
            return where if isinstance(where, list) else None

        await eventually(lambda: _is_some(drawn()), timeout_s=30.0, every_s=0.2)
        first = await drawn()
        assert first is not None
        # The driver heads north in steps: the marker follows, on the canvas too.
        for step in range(1, 6):
            r = await http.post(
                "/v1/drivers/me/position", json={"lat": lat + step * 0.002, "lng": lng}
            )
            assert r.status_code == 200, r.text

        async def moved_north() -> bool:
            now = await drawn()
            return now is not None and now[0] > first[0] + 0.009 and now[2] < first[2] - 1

        await eventually(moved_north, timeout_s=30.0, every_s=0.2)
        snapshots = await page.evaluate("document.body.dataset.snapshots")
        assert snapshots == "1"  # one snapshot, then deltas: no reloads of the area
        assert not [u for u in page.requests if "/v1/admin/drivers" in u], page.requests
        assert [u for u in page.requests if "/v1/admin/trips" in u]  # the trips poll runs
        assert area_requests((await http.get("/metrics")).text) == before


async def _is_some(value: Any) -> bool:
    return await value is not None
