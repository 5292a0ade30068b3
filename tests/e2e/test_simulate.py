"""The simulator against the whole system: a short time-compressed run through the edge, and
`rideshare up --demo` as a person starts it, on a machine whose CPUs are busy with other work."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rideshare.simulate import SimConfig, run
from rideshare.simulate.city import BERLIN, BBox
from tests.e2e.conftest import Stack
from tests.e2e.test_up import BIN, alive, descendants, rideshare, up_env  # noqa: F401


def a_city_of_our_own() -> BBox:
    """About 4 x 4 km somewhere no other test puts drivers."""
    lat, lng = random.uniform(-40.0, 40.0), random.uniform(-150.0, 150.0)
    return BBox(lat, lng, lat + 0.036, lng + 0.036)


async def test_a_short_simulation_completes_trips_and_keeps_every_invariant(
    stack: Stack, tmp_path: Path
) -> None:
    cfg = SimConfig(
        edge_url=stack.edge_url,
        stripe_api_base=stack.stripe_api_base,
        drivers=6,
        riders=3,
        rate=1.0,
        duration_s=15.0,
        drain_s=25.0,
        speedup=40.0,
        accept_prob=0.8,
        cancel_prob=0.2,
        seed=8,
        city=a_city_of_our_own(),
        min_report_s=0.3,
        view="none",
        json_out=tmp_path / "summary.json",
    )
    async with asyncio.timeout(120):
        summary = await run(cfg)

    assert summary["violations"] == [], summary["violations"]
    assert summary["ok"] is True
    assert summary["trips_by_state"]["completed"] >= 1, summary
    assert summary["counters"]["trips_requested"] >= 2
    assert summary["latency_ms"]["request_to_accept"]["count"] >= 1
    assert summary["latency_ms"]["position_delivery"]["count"] >= 1
    assert not [e for e in summary["errors"] if " 5" in e or "timeout" in e], summary["errors"]
    assert (tmp_path / "summary.json").read_text().startswith("{")


CPU_HOGS = 2


@pytest.fixture
def busy_machine() -> Iterator[list[int]]:
    """Two processes that burn a CPU each for the whole test (the system must hold when any
    CPU is busy with other work); stopped by their own PIDs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(CPU_HOGS)]
    try:
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)


def test_up_demo_on_a_busy_machine_serves_the_viewer_keeps_invariants_and_stops_on_sigint(
    up_env: dict[str, str],  # noqa: F811
    busy_machine: list[int],
) -> None:
    assert all(alive(pid) for pid in busy_machine)
    # The demo as an operator runs it: asyncio's debug mode (CI's, for every other test) makes
    # each callback several times dearer, which beside two CPU hogs no longer measures the
    # system but the debugger.
    demo_env = {k: v for k, v in up_env.items() if k != "PYTHONASYNCIODEBUG"}
    launcher = subprocess.Popen(
        [str(BIN / "rideshare"), "up", "--demo"],
        env=demo_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    edge = f"http://127.0.0.1:{up_env['RIDESHARE_EDGE_PORT']}"
    try:
        deadline = time.monotonic() + 120
        while rideshare("status", env=up_env).returncode != 0:
            assert launcher.poll() is None, launcher.communicate()[0]
            assert time.monotonic() < deadline, "rideshare up --demo was not healthy in 120 s"
            time.sleep(0.5)

        viewer = httpx.get(f"{edge}/viewer", timeout=10)
        assert viewer.status_code == 200 and "<canvas" in viewer.text

        trip_port = up_env["RIDESHARE_TRIP_PORT"]
        listing = subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{trip_port}", "list"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        assert "rideshare.trip.v1.TripService" in listing

        admin = rideshare("token", "--ttl", "600", env=up_env).stdout.strip()
        online = 0
        # Generous: 20 signups wait for scrypt beside the hogs (and whatever else runs here).
        deadline = time.monotonic() + 180
        while online < 20:
            assert launcher.poll() is None, launcher.communicate()[0]
            assert time.monotonic() < deadline, f"only {online} simulated drivers online in 180 s"
            r = httpx.get(
                f"{edge}/v1/admin/drivers",
                params={"bbox": str(BERLIN)},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            online = len(r.json()["drivers"])
            time.sleep(1.0)
        children = descendants(launcher.pid)
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=90)

    assert launcher.returncode == 0, output
    assert "/viewer?bbox=" in output and "#token=" in output, output
    assert "grpcurl -plaintext" in output and "Ctrl-C" in output
    assert "demo: invariants held" in output, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    assert "never retrieved" not in output, output[-5000:]
    assert "\ncrashes   none" in output, output[-5000:]  # the final summary's app failures
    assert all(alive(pid) for pid in busy_machine)  # busy the whole time
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []
    assert rideshare("status", env=up_env).returncode != 0
