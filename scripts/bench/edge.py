"""Benchmark of the edge: WebSocket position ingest, driver -> rider latency, idle sockets.

    .venv/bin/python -m scripts.bench.edge [--drivers 2000] [--rate 5] [--seconds 15]
                                           [--pairs 20] [--idle 10000]

Starts its own embedded Redis / PostgreSQL / NATS (or uses RIDESHARE_* URLs) and the whole
system as child processes (rideshare.supervisor; ONE edge process), and drives it from this
ONE client process over HTTP and WebSocket only. Prints the figures; asserts no target.

1. setup: ``--pairs`` real trips (signup -> online -> request -> offer -> accept), so that
   ``--pairs`` rider sockets watch their driver.
2. ingest + latency: ``--drivers`` driver sockets (tokens minted with the edge's secret) send
   ``--rate`` positions/s each for ``--seconds``, plus the pair drivers at the same rate.
   Reported: positions/s sent, positions/s the edge forwarded to location (its /metrics), and
   the delay from a pair driver's send (ts_ms) to its rider's socket receiving it (p50/p99).
3. idle: the edge's RSS before and after opening ``--idle`` idle driver sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from edge.auth import issue_token
from rideshare.infra import free_port
from rideshare.settings import InfraUrls
from rideshare.supervisor import SERVICE_ORDER, Supervisor, available_services
from scripts.bench.location import infrastructure, percentile

SECRET = "bench-secret-" + "b" * 40
PASSWORD = "bench-password-1"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.asynccontextmanager
async def system(urls: InfraUrls) -> AsyncIterator[tuple[str, Supervisor]]:
    ports = {name: free_port() for name in SERVICE_ORDER}
    names = available_services()
    env = {
        "RIDESHARE_JWT_SECRET": SECRET,
        "RIDESHARE_LOG_LEVEL": "WARNING",
        "RIDESHARE_SHUTDOWN_GRACE_S": "2",
        "RIDESHARE_DRIVER_STALE_S": "600",
        "RIDESHARE_OFFER_TIMEOUT_S": "60",
        "RIDESHARE_EDGE_UPSTREAMS": ",".join(n for n in names if n != "edge"),
        "RIDESHARE_EDGE_PORT": str(ports["edge"]),
        "RIDESHARE_RATE_PER_IP": "1000000",
        "RIDESHARE_BURST_PER_IP": "1000000",
        "RIDESHARE_WS_MSGS_PER_S": "1000",
    }
    for name in SERVICE_ORDER:
        if name != "edge":
            env[f"RIDESHARE_{name.upper()}_PORT"] = str(ports[name])
            env[f"RIDESHARE_{name.upper()}_METRICS_PORT"] = "0"
            env[f"RIDESHARE_{name.upper()}_ADDR"] = f"127.0.0.1:{ports[name]}"
    supervisor = Supervisor(urls, extra_env=env, ports=ports, ready_timeout_s=90)
    try:
        for name in names:
            await supervisor.start(name)
        yield f"http://127.0.0.1:{ports['edge']}", supervisor
    finally:
        await supervisor.stop_all(grace_s=10)


def edge_pid(supervisor: Supervisor) -> int:
    return next(c.process.pid for c in supervisor.children if c.name == "edge")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def forwarded(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("edge_positions_forwarded_total "):
            return float(line.split()[1])
    return 0.0


def position(lat: float, lng: float) -> str:
    return json.dumps(
        {
            "type": "position",
            "lat": lat,
            "lng": lng,
            "heading": 90.0,
            "speed_mps": 8.0,
            "accuracy_m": 5.0,
            "ts_ms": now_ms(),
        }
    )


@dataclass
class Pair:
    lat: float
    lng: float
    driver_id: str = ""
    driver_ws: ClientConnection | None = None
    rider_ws: ClientConnection | None = None
    latencies: list[float] = field(default_factory=list)


async def signup(http: httpx.AsyncClient, role: str) -> tuple[str, str]:
    number = "+49160" + str(uuid.uuid4().int)[:8]
    body: dict[str, Any] = {"name": "Bench", "phone": number, "password": PASSWORD}
    if role == "driver":
        body["license_number"] = "L-1"
    (await http.post(f"/v1/{role}s", json=body)).raise_for_status()
    r = await http.post(
        "/v1/auth/token", json={"phone": number, "password": PASSWORD, "role": role}
    )
    r.raise_for_status()
    return r.json()["user_id"], r.json()["access_token"]


async def next_frame(ws: ClientConnection, kind: str, timeout_s: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def make_pair(http: httpx.AsyncClient, ws_url: str, pair: Pair) -> None:
    """A real trip in ACCEPTED: its driver's socket and its rider's socket."""
    pair.driver_id, dtoken = await signup(http, "driver")
    _, rtoken = await signup(http, "rider")
    h = {"Authorization": f"Bearer {dtoken}"}
    vehicle = {
        "make": "VW",
        "model": "ID.3",
        "plate": f"BN{uuid.uuid4().hex[:6]}",
        "seats": 4,
        "vehicle_class": "standard",
    }
    (await http.post("/v1/drivers/me/vehicles", headers=h, json=vehicle)).raise_for_status()
    (await http.post("/v1/drivers/me/online", headers=h)).raise_for_status()
    pair.driver_ws = await connect(f"{ws_url}/v1/ws/driver?token={dtoken}", max_queue=None)
    await pair.driver_ws.send(position(pair.lat, pair.lng))
    await asyncio.sleep(1.0)  # the position reaches the index
    rh = {"Authorization": f"Bearer {rtoken}"}
    q = await http.post(
        "/v1/fare-estimates",
        headers=rh,
        json={
            "pickup": {"lat": pair.lat, "lng": pair.lng},
            "dropoff": {"lat": pair.lat + 0.02, "lng": pair.lng + 0.02},
        },
    )
    q.raise_for_status()
    quote = q.json()
    t = await http.post(
        "/v1/trips",
        headers=rh,
        json={
            "quote_id": quote["quote_id"],
            "pickup": quote["pickup"],
            "dropoff": quote["dropoff"],
        },
    )
    t.raise_for_status()
    offer = await next_frame(pair.driver_ws, "offer")
    a = await http.post(
        f"/v1/trips/{offer['trip_id']}/accept", headers=h, json={"offer_id": offer["offer_id"]}
    )
    a.raise_for_status()
    pair.rider_ws = await connect(f"{ws_url}/v1/ws/rider?token={rtoken}", max_queue=None)


async def drive(ws: ClientConnection, lat: float, lng: float, rate: float, until: float) -> int:
    sent = 0
    interval = 1.0 / rate
    await asyncio.sleep(random.random() * interval)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        lat += 1e-5
        await ws.send(position(lat, lng))
        sent += 1
        await asyncio.sleep(interval)
    return sent


async def listen(pair: Pair, until: float, since_ms: int) -> None:
    """Delays of the pair driver's positions sent since ``since_ms`` (not the snapshot)."""
    assert pair.rider_ws is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, until - loop.time()) + 1.0):
            while True:
                frame = json.loads(await pair.rider_ws.recv())
                if (
                    frame["type"] == "driver_position"
                    and frame["driver_id"] == pair.driver_id
                    and frame["ts_ms"] >= since_ms
                ):
                    pair.latencies.append(now_ms() - frame["ts_ms"])


async def drain(ws: ClientConnection) -> None:
    """Read and discard (pings, errors) so the socket's buffers never fill."""
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def open_driver_sockets(ws_url: str, count: int, prefix: str) -> list[ClientConnection]:
    sockets: list[ClientConnection] = []
    for start in range(0, count, 200):
        batch = await asyncio.gather(
            *(
                connect(
                    f"{ws_url}/v1/ws/driver?token="
                    + issue_token(SECRET, sub=f"{prefix}-{i}", role="driver", ttl_s=3600),
                    max_queue=None,
                    open_timeout=60,
                    ping_interval=None,
                )
                for i in range(start, min(count, start + 200))
            )
        )
        sockets.extend(batch)
    return sockets


async def run(args: argparse.Namespace) -> None:
    limit = raise_fd_limit()
    print(f"open file limit: {limit}")
    async with infrastructure() as urls, system(urls) as (url, supervisor):
        ws_url = url.replace("http://", "ws://")
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            rng = random.Random(7)
            pairs = [Pair(lat=-40 + i * 1.5, lng=-120 + rng.random()) for i in range(args.pairs)]
            sem = asyncio.Semaphore(5)

            async def one(pair: Pair) -> None:
                async with sem:
                    await make_pair(http, ws_url, pair)

            started = time.monotonic()
            await asyncio.gather(*(one(p) for p in pairs))
            print(f"setup: {len(pairs)} accepted trips in {time.monotonic() - started:.1f}s")

            load = await open_driver_sockets(ws_url, args.drivers, f"load-{uuid.uuid4().hex[:6]}")
            drains = [asyncio.create_task(drain(ws)) for ws in load]
            drains += [asyncio.create_task(drain(p.driver_ws)) for p in pairs if p.driver_ws]
            rss = rss_kib(edge_pid(supervisor)) / 1024
            print(f"ingest: {len(load)} driver sockets open, edge RSS {rss:.0f} MiB")
            loop = asyncio.get_running_loop()
            until = loop.time() + args.seconds
            before = await forwarded(http)
            t0 = time.monotonic()
            base = [(52.38 + rng.random() * 0.27, 13.2 + rng.random() * 0.43) for _ in load]
            senders = [
                drive(ws, lat, lng, args.rate, until)
                for ws, (lat, lng) in zip(load, base, strict=True)
            ] + [drive(p.driver_ws, p.lat, p.lng, args.rate, until) for p in pairs if p.driver_ws]
            listeners = [listen(p, until, now_ms()) for p in pairs]
            results = await asyncio.gather(*senders, *listeners)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.5)
            after = await forwarded(http)
            sent = sum(r for r in results if isinstance(r, int))
            latencies = [v for p in pairs for v in p.latencies]
            print(
                f"ingest: clients sent {sent / elapsed:,.0f} positions/s "
                f"({len(load) + len(pairs)} sockets x {args.rate}/s target); "
                f"edge forwarded {(after - before) / elapsed:,.0f}/s to location"
            )
            if latencies:
                p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
                print(
                    f"latency driver WS -> rider WS ({len(latencies)} samples, "
                    f"{len(pairs)} riders): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
                    f"max {max(latencies):.0f} ms"
                )
            for ws in load:
                await ws.close()
            for task in drains:
                task.cancel()

            pid = edge_pid(supervisor)
            await asyncio.sleep(1.0)
            rss0 = rss_kib(pid)
            idle = await open_driver_sockets(ws_url, args.idle, f"idle-{uuid.uuid4().hex[:6]}")
            idle_drains = [asyncio.create_task(drain(ws)) for ws in idle]
            await asyncio.sleep(2.0)
            rss1 = rss_kib(pid)
            print(
                f"idle: {len(idle)} sockets held by one edge process; RSS {rss0 / 1024:.0f} -> "
                f"{rss1 / 1024:.0f} MiB = {(rss1 - rss0) / max(1, len(idle)):.1f} KiB per socket"
            )
            for ws in idle:
                await ws.close()
            for task in idle_drains:
                task.cancel()
            for p in pairs:
                for conn in (p.driver_ws, p.rider_ws):
                    if conn is not None:
                        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drivers", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=5.0, help="positions/s per driver socket")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--idle", type=int, default=10_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
