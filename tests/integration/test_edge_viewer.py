"""The live map viewer in headless Chromium: a driver reported through the API appears.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped, with that reason,
only when the binary is absent. The screenshot is kept in artifacts/edge-viewer.png.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rideshare.settings import InfraUrls
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
