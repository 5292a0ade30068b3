"""The edge as two worker processes on one port (edge/workers.py), over the e2e stack's
services: a rider whose socket is held by one worker sees the trip and the positions of a
driver whose socket is held by the other; a worker killed with SIGKILL is replaced while
the port stays served; /metrics sums the workers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect

from edge.workers import HUNG_AFTER_S
from rideshare.infra import free_port
from rideshare.supervisor import Supervisor
from tests.e2e.conftest import Stack
from tests.e2e.test_edge_flow import (
    _admin,
    auth,
    book_trip,
    driving,
    next_frame,
    signup,
    trip_in,
)
from tests.helpers import eventually


@dataclass
class TwoWorkers:
    url: str
    port: int
    supervisor: Supervisor

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def parent(self) -> int:
        return self.supervisor.child("edge").process.pid

    def workers(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.parent).children()}


@pytest.fixture(scope="module")
async def edge2(stack: Stack) -> AsyncIterator[TwoWorkers]:
    port = free_port()
    env = {**stack.env, "RIDESHARE_EDGE_PORT": str(port), "RIDESHARE_EDGE_WORKERS": "2"}
    supervisor = Supervisor(stack.infra, extra_env=env, ready_timeout_s=120.0)
    try:
        await supervisor.start("edge")
        edge = TwoWorkers(f"http://127.0.0.1:{port}", port, supervisor)
        await eventually(lambda: len(edge.workers()) == 2, timeout_s=120.0, every_s=0.2)
        yield edge
    finally:
        await supervisor.stop_all(grace_s=10.0)


def holder(ws: ClientConnection, edge_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the edge's end of the connection ``ws`` (by /proc)."""
    client_port = ws.local_address[1]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if local == edge_port and remote == client_port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError), os.scandir(f"/proc/{pid}/fd") as fds:
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        return pid
    return None


@contextlib.asynccontextmanager
async def socket_on_another_worker(
    edge: TwoWorkers, path: str, avoid: int
) -> AsyncIterator[ClientConnection]:
    """A socket at ``path`` that a worker other than ``avoid`` holds (the kernel spreads
    connections by their addresses: a few tries find one)."""
    for _ in range(40):
        async with connect(f"{edge.ws_url}{path}") as ws:
            if holder(ws, edge.port, edge.workers()) not in (avoid, None):
                yield ws
                return
    pytest.fail("40 sockets in a row landed on the same worker")


async def test_a_rider_sees_a_driver_whose_socket_another_worker_holds(
    edge2: TwoWorkers, stack: Stack
) -> None:
    lat, lng = -20.0 - random.random() * 20, 100.0 + random.random() * 20
    async with httpx.AsyncClient(base_url=edge2.url, timeout=10.0) as http:
        rider_id, rider_token = await signup(http, "rider", stripe_api_base=stack.stripe_api_base)
        driver_id, driver_token = await signup(http, "driver")
        v = await http.post(
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
        online = await http.post("/v1/drivers/me/online", headers=auth(driver_token))
        assert online.status_code == 200, online.text

        async with connect(f"{edge2.ws_url}/v1/ws/driver?token={driver_token}") as driver_ws:
            driver_worker = holder(driver_ws, edge2.port, edge2.workers())
            assert driver_worker is not None
            async with (
                socket_on_another_worker(
                    edge2, f"/v1/ws/rider?token={rider_token}", avoid=driver_worker
                ) as rider_ws,
                driving(driver_ws, lat + 0.001, lng),
            ):

                async def indexed() -> bool:
                    r = await http.get(
                        "/v1/admin/drivers",
                        headers=auth(_admin(stack)),
                        params={"bbox": f"{lat - 0.01},{lng - 0.01},{lat + 0.01},{lng + 0.01}"},
                    )
                    return any(d["driver_id"] == driver_id for d in r.json()["drivers"])

                await eventually(indexed, timeout_s=20.0, every_s=0.2)
                trip_id = await book_trip(http, rider_token, lat, lng)
                offer = await next_frame(
                    driver_ws, lambda f: f["type"] == "offer" and f["trip_id"] == trip_id, 30.0
                )
                accepted = await http.post(
                    f"/v1/trips/{trip_id}/accept",
                    headers=auth(driver_token),
                    json={"offer_id": offer["offer_id"]},
                )
                assert accepted.status_code == 200, accepted.text
                await next_frame(rider_ws, trip_in("accepted"), 30.0)
                seen = await next_frame(rider_ws, lambda f: f["type"] == "driver_position", 30.0)
                assert seen["driver_id"] == driver_id
                later = await next_frame(
                    rider_ws,
                    lambda f: f["type"] == "driver_position" and f["ts_ms"] > seen["ts_ms"],
                    30.0,
                )
                assert later["lat"] > seen["lat"]  # the driver moves north, position by position
                r = await http.post(f"/v1/trips/{trip_id}/arrive", headers=auth(driver_token))
                assert r.status_code == 200, r.text
                await next_frame(rider_ws, trip_in("arrived"), 30.0)
        assert rider_id


async def test_a_worker_killed_with_sigkill_is_replaced_and_the_port_stays_served(
    edge2: TwoWorkers,
) -> None:
    before = edge2.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    async with httpx.AsyncClient(base_url=edge2.url, timeout=5.0) as http:
        # Served all along by the other worker (fresh connections: the kernel picks anew).
        for _ in range(10):
            r = await http.get("/healthz", headers={"Connection": "close"})
            assert r.status_code == 200, r.text

        def replaced() -> bool:
            now = edge2.workers()
            return len(now) == 2 and victim not in now

        await eventually(replaced, timeout_s=60.0, every_s=0.2)
        assert edge2.supervisor.child("edge").process.returncode is None  # the parent lived

        async def both_serve() -> bool:
            # Each worker answers its share: 20 fresh connections reach both.
            holders = set()
            for _ in range(20):
                async with connect(f"{edge2.ws_url}/v1/ws/rider") as ws:
                    holders.add(holder(ws, edge2.port, edge2.workers()))
            return edge2.workers() <= holders

        await eventually(both_serve, timeout_s=60.0, every_s=0.5)


async def test_a_frozen_worker_is_killed_and_replaced(edge2: TwoWorkers) -> None:
    """SIGSTOP stops a worker's heartbeat: its parent kills it after HUNG_AFTER_S."""
    victim = min(edge2.workers())
    os.kill(victim, signal.SIGSTOP)
    try:

        def replaced() -> bool:
            now = edge2.workers()
            return len(now) == 2 and victim not in now

        await eventually(replaced, timeout_s=HUNG_AFTER_S + 60.0, every_s=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)


async def test_metrics_are_the_sum_over_the_workers(edge2: TwoWorkers) -> None:
    """Each scrape lands on one worker and still counts the requests every worker served."""

    async def requests_counted() -> float:
        text = (await http.get("/metrics", headers={"Connection": "close"})).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("edge_http_requests_total{") and 'route="/healthz"' in line
        )

    async with httpx.AsyncClient(base_url=edge2.url, timeout=5.0) as http:
        start = await requests_counted()
        began = time.monotonic()
        for _ in range(20):
            assert (await http.get("/healthz", headers={"Connection": "close"})).status_code == 200
        assert time.monotonic() - began < 60
        assert await requests_counted() >= start + 20


async def test_kill_9_of_the_parent_takes_its_workers_and_the_supervisor_starts_a_new_edge(
    edge2: TwoWorkers,
) -> None:
    parent, workers = edge2.parent, edge2.workers()
    async with edge2.supervisor.supervising():
        os.kill(parent, signal.SIGKILL)

        def alive(pid: int) -> bool:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            return stat.rsplit(")", 1)[1].split()[0] != "Z"

        # Each worker dies with its parent (it gets SIGTERM and drains).
        await eventually(lambda: not any(alive(w) for w in workers), timeout_s=60.0, every_s=0.2)

        def restarted() -> bool:
            return edge2.parent != parent and len(edge2.workers()) == 2

        await eventually(restarted, timeout_s=90.0, every_s=0.2)

        async def serving() -> bool:
            async with httpx.AsyncClient(base_url=edge2.url, timeout=5.0) as http:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

        await eventually(serving, timeout_s=60.0, every_s=0.5)
