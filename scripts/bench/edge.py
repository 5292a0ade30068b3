"""Benchmark of the edge: WebSocket position ingest, driver -> rider latency, idle sockets.

    .venv/bin/python -m scripts.bench.edge [--drivers 2000] [--rate 5] [--seconds 15]
                                           [--pairs 20] [--idle 10000] [--procs 3]
                                           [--edge-workers 1]

Starts its own embedded Redis / PostgreSQL / NATS (or uses RIDESHARE_* URLs) and the whole
system as child processes (rideshare.supervisor; ONE edge process, or ``--edge-workers``
worker processes under the edge's parent: RSS and CPU are then summed over them, and the CPU
per position is printed per process too), and drives it over HTTP and WebSocket only. Prints
the figures; asserts no target.

The load comes from ``--procs`` client processes, each owning a slice of the driver sockets
(opened before the timed phase), so that the load generator is not one saturated event loop
whose own lag would be counted as the edge's latency. The pair drivers and their riders live
in this (lightly loaded) main process, which measures the latency.

1. setup: ``--pairs`` real trips (signup -> online -> request -> offer -> accept), so that
   ``--pairs`` rider sockets watch their driver.
2. ingest + latency: ``--drivers`` driver sockets (tokens minted with the edge's secret) send
   ``--rate`` positions/s each for ``--seconds``, plus the pair drivers at the same rate.
   Reported: positions/s the clients sent (and how far behind their schedule they fell),
   positions/s the edge forwarded to location (its /metrics), positions/s location applied
   (Redis ``PEXPIRE`` calls, one per applied update in its ingest script), the wall-clock
   delay from a pair driver's send (``ts_ms = time.time()``) to its rider's socket receiving
   the position (p50/p99), split at location's publish on NATS (this process subscribes to
   the pair drivers' subjects too), and the CPU each process used during the phase.
3. idle: the edge's RSS before and after opening ``--idle`` idle driver sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import httpx
import nats
import psutil
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

try:  # websockets' C speedup, as its own sends use; its pure Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without the C extension
    from websockets.utils import apply_mask

from edge.auth import issue_token
from protos import events
from protos.location.v1 import location_pb2
from rideshare.infra import free_port
from rideshare.redis_client import RedisClient, open_redis
from rideshare.settings import ONE_ADDRESS_LOGIN_LIMITS, InfraUrls
from rideshare.simulate.cards import tokenize_card
from rideshare.supervisor import SERVICE_ORDER, Supervisor, available_services
from scripts.bench.common import (
    HOG,
    cpu_hogs,
    infrastructure,
    percentile,
    process_tree,
    tree_cpu_s,
    tree_rss_kib,
)

SECRET = "bench-secret-" + "b" * 40
PASSWORD = "bench-password-1"
OUTSIDE = "not this benchmark (other work)"
SLOW_MS = 50
POSITION_COUNTERS = ("received", "conflated", "forwarded", "dropped")
FRESH_MS = 1_000  # the target: the p99 age of what a rider sees
AGE_SAMPLE_S = 0.1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.asynccontextmanager
async def system(urls: InfraUrls, workers: int) -> AsyncIterator[tuple[str, Supervisor]]:
    ports = {name: free_port() for name in SERVICE_ORDER}
    names = available_services()
    env = {
        "RIDESHARE_JWT_SECRET": SECRET,
        "RIDESHARE_LOG_LEVEL": "WARNING",
        "RIDESHARE_SHUTDOWN_GRACE_S": "2",
        "RIDESHARE_DRIVER_STALE_S": "600",
        "RIDESHARE_OFFER_TIMEOUT_S": "60",
        "RIDESHARE_EDGE_PORT": str(ports["edge"]),
        "RIDESHARE_RATE_PER_IP": "1000000",
        "RIDESHARE_BURST_PER_IP": "1000000",
        **ONE_ADDRESS_LOGIN_LIMITS,
        "RIDESHARE_WS_MSGS_PER_S": "1000",
        "RIDESHARE_EDGE_WORKERS": str(workers),
    }
    for name in SERVICE_ORDER:
        if name != "edge":
            env[f"RIDESHARE_{name.upper()}_PORT"] = str(ports[name])
            env[f"RIDESHARE_{name.upper()}_METRICS_PORT"] = "0"
    supervisor = Supervisor(urls, extra_env=env, ready_timeout_s=90)
    try:
        for name in names:
            await supervisor.start(name)
        yield f"http://127.0.0.1:{ports['edge']}", supervisor
    finally:
        await supervisor.stop_all(grace_s=10)


def edge_pid(supervisor: Supervisor) -> int:
    return next(c.process.pid for c in supervisor.children if c.name == "edge")


async def counters(http: httpx.AsyncClient) -> dict[str, float]:
    """The edge's position counters (received, conflated, forwarded, dropped)."""
    text = (await http.get("/metrics")).text
    found = dict.fromkeys(POSITION_COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = name.removeprefix("edge_positions_").removesuffix("_total")
        if key in found and name.startswith("edge_positions_"):
            found[key] += float(value)
    return found


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
    published: list[float] = field(default_factory=list)  # send -> location's NATS publish
    # ts_ms -> when this process saw it on NATS, and NATS -> rider socket per position: the
    # edge's own part of the delay (the live path from NATS to the rider's socket)
    seen_on_nats: dict[int, int] = field(default_factory=dict)
    seen_on_socket: dict[int, int] = field(default_factory=dict)  # when the socket was first
    after_nats: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # wall clock of each latency sample
    last_ts_ms: int = 0  # the newest position the rider's socket showed
    ages: list[float] = field(default_factory=list)  # its age, sampled every AGE_SAMPLE_S

    def reset(self) -> None:
        for samples in (self.latencies, self.published, self.after_nats, self.sent_at, self.ages):
            samples.clear()
        self.seen_on_nats.clear()
        self.seen_on_socket.clear()


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


async def make_pair(
    http: httpx.AsyncClient, ws_url: str, pair: Pair, *, stripe_api_base: str
) -> None:
    """A real trip in ACCEPTED: its driver's socket and its rider's socket (a rider books
    only with a card)."""
    pair.driver_id, dtoken = await signup(http, "driver")
    _, rtoken = await signup(http, "rider")
    card = await http.post(
        "/v1/me/payment-methods",
        headers={"Authorization": f"Bearer {rtoken}"},
        json={"payment_method_id": await tokenize_card(stripe_api_base)},
    )
    card.raise_for_status()
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


async def drive(
    ws: ClientConnection, lat: float, lng: float, *, rate: float, start: float, seconds: float
) -> tuple[int, float]:
    """Send ``rate`` positions/s from wall-clock ``start`` for ``seconds``, on a fixed
    schedule (a late send does not push the next one back). Returns (sent, worst lateness s)."""
    interval = 1.0 / rate
    due = start + random.random() * interval
    end = start + seconds
    sent = 0
    late = 0.0
    while due < end:
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        lat += 1e-5
        if ws.transport.get_write_buffer_size() < _WRITE_BACKLOG:
            ws.transport.write(masked_text_frame(position(lat, lng)))
        else:  # the edge is not reading: wait for the socket as a phone's stack would
            await ws.send(position(lat, lng))
        sent += 1
        due += interval
    return sent, late


# Bytes a load socket may have queued before its sends wait for the socket to drain.
_WRITE_BACKLOG = 64 * 1024


def masked_text_frame(text: str) -> bytes:
    """A client's text frame of ``text``, masked as RFC 6455 requires, built here: the load
    clients write positions straight to their sockets, so that websockets' per-message send
    path (about three times this) does not take the CPU the edge is measured on. What the
    edge receives, and its side of the socket, are the same."""
    payload = text.encode()
    mask = random.getrandbits(32).to_bytes(4, "big")
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    else:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return header + mask + apply_mask(payload, mask)


async def listen(pair: Pair, until: float, since_ms: int) -> None:
    """Delays of the pair driver's positions sent since ``since_ms`` (not the snapshot)."""
    assert pair.rider_ws is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, until - time.time()) + 1.0):
            while True:
                frame = json.loads(await pair.rider_ws.recv())
                if (
                    frame["type"] == "driver_position"
                    and frame["driver_id"] == pair.driver_id
                    and frame["ts_ms"] >= since_ms
                ):
                    received = now_ms()
                    pair.last_ts_ms = max(pair.last_ts_ms, frame["ts_ms"])
                    pair.latencies.append(received - frame["ts_ms"])
                    pair.sent_at.append(frame["ts_ms"] / 1000)
                    seen = pair.seen_on_nats.pop(frame["ts_ms"], None)
                    if seen is not None:
                        pair.after_nats.append(received - seen)
                    else:  # this loop read the socket before its own NATS message
                        pair.seen_on_socket[frame["ts_ms"]] = received


async def sample_ages(pairs: list[Pair], start: float, end: float) -> None:
    """The age of the position each rider's map shows, every AGE_SAMPLE_S of the phase after
    its first second: a marker that stops moving ages here even when no late frame arrives
    to be timed. It includes the report interval (a 5/s driver's marker is up to 200 ms old
    on a perfect path). Positions from before the phase count as sent at its start, so the
    pause between phases is not counted."""
    await asyncio.sleep(max(0.0, start + 1.0 - time.time()))
    start_ms = int(start * 1000)
    while time.time() < end:
        now = now_ms()
        for pair in pairs:
            pair.ages.append(now - max(pair.last_ts_ms, start_ms))
        await asyncio.sleep(AGE_SAMPLE_S)


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


# -- load client processes -------------------------------------------------------------------


def load_process(pipe: Connection, ws_url: str) -> None:
    """Entry point of one load client process (spawned): obeys commands from the pipe. On
    uvloop, like the edge, so that the clients leave as much of the machine as they can."""
    uvloop.run(_load_commands(pipe, ws_url))


async def _load_commands(pipe: Connection, ws_url: str) -> None:
    """Commands: ("open", prefix, count[, ws_url]) -> ("opened", n); ("touch",) -> one
    position on every socket, ("touched", n); ("drive", start, seconds, rate)
    -> ("driven", sent, worst lateness s); ("close",) -> ("closed",); ("exit",)."""
    raise_fd_limit()
    rng = random.Random()
    sockets: list[ClientConnection] = []
    drains: list[asyncio.Task[None]] = []
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command[0] == "open":
            _, prefix, count, *url = command
            opened = await open_driver_sockets(url[0] if url else ws_url, count, prefix)
            drains += [asyncio.create_task(drain(ws)) for ws in opened]
            sockets += opened
            pipe.send(("opened", len(opened)))
        elif command[0] == "drive":
            _, start, seconds, rate = command
            results = await asyncio.gather(
                *(
                    drive(
                        ws,
                        52.38 + rng.random() * 0.27,
                        13.2 + rng.random() * 0.43,
                        rate=rate,
                        start=start,
                        seconds=seconds,
                    )
                    for ws in sockets
                )
            )
            pipe.send(("driven", sum(s for s, _ in results), max(lt for _, lt in results)))
        elif command[0] == "touch":
            for ws in sockets:
                await ws.send(position(52.5, 13.4))
            pipe.send(("touched", len(sockets)))
        elif command[0] == "close":
            await asyncio.gather(*(ws.close() for ws in sockets))
            for task in drains:
                task.cancel()
            sockets, drains = [], []
            pipe.send(("closed",))
        else:
            return


@dataclass
class LoadClient:
    process: BaseProcess
    pipe: Connection

    async def ask(self, *command: Any) -> Any:
        self.pipe.send(command)
        return await asyncio.to_thread(self.pipe.recv)


@contextlib.contextmanager
def load_clients(count: int, ws_url: str) -> Iterator[list[LoadClient]]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited event loop
    clients = []
    for _ in range(count):
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=load_process, args=(theirs, ws_url), daemon=True)
        process.start()
        clients.append(LoadClient(process, mine))
    try:
        yield clients
    finally:
        for c in clients:
            with contextlib.suppress(OSError):
                c.pipe.send(("exit",))
        for c in clients:
            c.process.join(5.0)
            if c.process.is_alive():
                c.process.terminate()


async def on_all(clients: list[LoadClient], *commands: tuple[Any, ...]) -> list[Any]:
    return await asyncio.gather(*(c.ask(*cmd) for c, cmd in zip(clients, commands, strict=True)))


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- what the rest of the system did ---------------------------------------------------------


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) of every process on the machine; processes that are
    not descendants of this one (other work on a shared machine) are lumped together."""
    mine = {p.pid for p in process_tree(os.getpid())}
    found = {}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        times, argv = p.info["cpu_times"], p.info["cmdline"] or []
        if times is None:  # gone, or not ours to read
            continue
        role = _role(p.pid, argv) if p.pid in mine else OUTSIDE
        found[p.pid] = (role, times.user + times.system)
    return found


def _role(pid: int, argv: list[str]) -> str:
    if pid == os.getpid():
        return "bench main (pairs, latency)"
    words = [a for a in argv if a]
    if "-m" in words[:-1]:
        return "service " + words[words.index("-m") + 1]
    if HOG in words:
        return "CPU hogs (--hogs)"
    if any("multiprocessing" in w for w in words):
        return "bench load clients"
    name = os.path.basename(words[0]) if words else ""
    for known in ("nats-server", "valkey-server", "redis-server", "postgres"):
        if known in name:
            return known
    return "other child of the bench"


def cpu_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall_s: float
) -> list[tuple[str, float]]:
    """(role, % of one core) over the interval, busiest first."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used[role] = used.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return sorted(((r, 100 * s / wall_s) for r, s in used.items() if s > 0), key=lambda x: -x[1])


def edge_cpu_by_process(pid: int) -> dict[int, float]:
    """pid -> CPU seconds so far of the edge's parent and each of its workers."""
    found = {}
    for process in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


async def applied_by_location(redis: RedisClient) -> int:
    """PEXPIRE calls so far: location's ingest script makes one per applied update."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_pexpire", {}).get("calls", 0))


def print_delays(label: str, values: list[float]) -> None:
    if values:
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"{label}, {len(values)} samples: "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(values):.0f} ms"
        )


# -- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    limit = raise_fd_limit()
    print(f"open file limit: {limit}; {args.procs} load client processes")
    async with infrastructure() as urls, system(urls, args.edge_workers) as (url, supervisor):
        ws_url = url.replace("http://", "ws://")
        redis = open_redis(urls.redis_url, timeout_s=10)
        with load_clients(args.procs, ws_url) as clients:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                args.stripe_api_base = urls.stripe_api_base
                args.clients = clients
                await phases(args, http, redis, urls.nats_url, ws_url, supervisor, clients)
        await redis.aclose()


async def phases(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    redis: RedisClient,
    nats_url: str,
    ws_url: str,
    supervisor: Supervisor,
    clients: list[LoadClient],
) -> None:
    rng = random.Random(7)
    pairs = [Pair(lat=-40 + i * 1.5, lng=-120 + rng.random()) for i in range(args.pairs)]
    sem = asyncio.Semaphore(5)

    async def one(pair: Pair) -> None:
        async with sem:
            await make_pair(http, ws_url, pair, stripe_api_base=args.stripe_api_base)

    started = time.monotonic()
    await asyncio.gather(*(one(p) for p in pairs))
    print(f"setup: {len(pairs)} accepted trips in {time.monotonic() - started:.1f}s")

    run_id = uuid.uuid4().hex[:6]
    reference = await raw_reference(args, clients, run_id)
    counts = split(args.drivers, len(clients))
    await on_all(clients, *(("open", f"load-{run_id}-{i}", n) for i, n in enumerate(counts)))
    drains = [asyncio.create_task(drain(p.driver_ws)) for p in pairs if p.driver_ws]
    pid = edge_pid(supervisor)
    # A socket is read only once the edge has sent its snapshot (a trip read per driver);
    # the clock starts when every socket's position got through, not while they queue.
    started = time.monotonic()
    before = (await counters(http))["received"]
    await on_all(clients, *([("touch",)] * len(clients)))
    async with asyncio.timeout(300):
        # The count lives in another process: nothing to wait on but its /metrics.
        while (await counters(http))["received"] - before < args.drivers:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
    print(
        f"ingest: {args.drivers} driver sockets open and read after "
        f"{time.monotonic() - started:.1f} s, edge RSS {tree_rss_kib(pid) / 1024:.0f} MiB"
    )
    nc = await nats.connect(nats_url, name="bench-edge")
    steps = []
    for rate in args.rates:
        steps.append(await ingest(args, rate, pairs, http, redis, nc, pid, reference))
    await nc.close()
    summarise(steps, reference)
    await on_all(clients, *([("close",)] * len(clients)))
    for task in drains:
        task.cancel()

    await asyncio.sleep(1.0)
    rss0 = tree_rss_kib(pid)
    counts = split(args.idle, len(clients))
    await on_all(clients, *(("open", f"idle-{run_id}-{i}", n) for i, n in enumerate(counts)))
    await asyncio.sleep(2.0)
    rss1 = tree_rss_kib(pid)
    print(
        f"idle: {args.idle} sockets held by {args.edge_workers} edge worker(s); "
        f"RSS {rss0 / 1024:.0f} -> "
        f"{rss1 / 1024:.0f} MiB = {(rss1 - rss0) / max(1, args.idle):.1f} KiB per socket"
    )
    await on_all(clients, *([("close",)] * len(clients)))
    for p in pairs:
        for conn in (p.driver_ws, p.rider_ws):
            if conn is not None:
                await conn.close()


@dataclass
class Step:
    """One ingest phase at one offered rate."""

    offered: float  # positions/s scheduled
    sent: float  # positions/s the clients sent
    received: float  # positions/s the edge received
    forwarded: float
    applied: float
    edge_us: float  # edge CPU per received position
    edge_pct: float  # edge CPU, % of one core
    age_p50: float  # age of the position riders' maps showed, sampled
    age_p99: float
    latency_p99: float  # driver WS -> rider WS per delivered position


async def ingest(
    args: argparse.Namespace,
    rate: float,
    pairs: list[Pair],
    http: httpx.AsyncClient,
    redis: RedisClient,
    nc: NATS,
    pid: int,
    reference: Reference,
) -> Step:
    """Every driver socket sends ``rate`` positions/s for ``--seconds``; what came out."""
    clients: list[LoadClient] = args.clients
    for p in pairs:
        p.reset()
    start = time.time() + 1.0
    end = start + args.seconds
    watched = {p.driver_id: p for p in pairs}

    async def on_position(msg: Msg) -> None:
        update = location_pb2.DriverPosition.FromString(msg.data)
        pair = watched.get(update.driver_id)
        if pair is not None and update.client_ts_ms >= start * 1000:
            seen = now_ms()
            pair.published.append(seen - update.client_ts_ms)
            on_socket = pair.seen_on_socket.pop(update.client_ts_ms, None)
            if on_socket is None:
                pair.seen_on_nats[update.client_ts_ms] = seen
            else:
                pair.after_nats.append(max(0, on_socket - seen))

    subs = [
        await nc.subscribe(events.location_driver_subject(p.driver_id), cb=on_position)
        for p in pairs
    ]
    driven = asyncio.gather(
        *(c.ask("drive", start, args.seconds, rate) for c in clients),
        *(
            drive(p.driver_ws, p.lat, p.lng, rate=rate, start=start, seconds=args.seconds)
            for p in pairs
            if p.driver_ws
        ),
        *(listen(p, end, int(start * 1000)) for p in pairs),
        sample_ages(pairs, start, end),
    )
    await asyncio.sleep(start - time.time())
    c0, applied0, cpu0 = await counters(http), await applied_by_location(redis), cpu_by_process()
    edge0, by_edge0 = tree_cpu_s(pid), edge_cpu_by_process(pid)
    await asyncio.sleep(end - time.time())
    c1, applied1, cpu1 = await counters(http), await applied_by_location(redis), cpu_by_process()
    edge1, by_edge1 = tree_cpu_s(pid), edge_cpu_by_process(pid)
    results = await driven
    await asyncio.sleep(1.0)
    c2, applied2 = await counters(http), await applied_by_location(redis)
    for sub in subs:
        await sub.unsubscribe()
    seconds = args.seconds
    sent = sum(r[1] if r[0] == "driven" else r[0] for r in results if r is not None)
    late = max(r[2] if r[0] == "driven" else r[1] for r in results if r is not None)
    sockets = args.drivers + len(pairs)
    received = c1["received"] - c0["received"]
    print(f"-- ingest at {rate:g} positions/s per socket --")
    print(
        f"ingest: clients sent {sent / seconds:,.0f} positions/s ({sockets} sockets x "
        f"{rate:g}/s = {sockets * rate:,.0f}/s scheduled; worst client lateness "
        f"{late * 1000:.0f} ms)"
    )
    print(
        f"ingest: edge received {received / seconds:,.0f}/s, forwarded "
        f"{(c1['forwarded'] - c0['forwarded']) / seconds:,.0f}/s to location (conflated "
        f"{(c1['conflated'] - c0['conflated']) / seconds:,.0f}/s), location applied "
        f"{(applied1 - applied0) / seconds:,.0f}/s (during the phase); 1 s later: received "
        f"{c2['received'] - c0['received']:,.0f}, forwarded "
        f"{c2['forwarded'] - c0['forwarded']:,.0f} and applied {applied2 - applied0:,.0f} "
        f"of {sent:,} sent"
    )
    ages = [v for p in pairs for v in p.ages]
    print_delays(
        f"age of the position riders' maps showed (sampled every {AGE_SAMPLE_S:g} s)", ages
    )
    latencies = [v for p in pairs for v in p.latencies]
    print_delays(f"latency driver WS -> rider WS ({len(pairs)} riders)", latencies)
    slow = sorted(
        {
            round(t - start, 1)
            for p in pairs
            for t, v in zip(p.sent_at, p.latencies, strict=True)
            if v > SLOW_MS
        }
    )
    if slow:
        shown = ", ".join(f"{t:.1f}" for t in slow[:20])
        print(f"  samples over {SLOW_MS} ms were sent at (s into the phase): {shown}")
    print_delays(
        "  of which driver WS -> location's publish on NATS",
        [v for p in pairs for v in p.published],
    )
    print_delays(
        "  and location's publish on NATS -> rider WS (the live path to the rider)",
        [v for p in pairs for v in p.after_nats],
    )
    edge_s = edge1 - edge0
    edge_us = 1e6 * edge_s / max(1.0, received)
    print(
        f"edge CPU per received position: {edge_us:.1f} us = {edge_us / reference.us:.2f} x the "
        f"bare websockets loop ({reference.us:.1f} us at {reference.rate:,.0f}/s)"
    )
    by_edge = [(p, s - by_edge0.get(p, 0.0)) for p, s in by_edge1.items()]
    print(
        "edge CPU per received position by edge process (parent first): "
        + ", ".join(f"pid {p} {1e6 * s / max(1.0, received):.1f} us" for p, s in by_edge)
    )
    split_ = cpu_split(cpu0, cpu1, end - start)
    cores = os.cpu_count() or 1
    print(
        f"CPU during the phase, % of one core ({cores} cores = {100 * cores} %; "
        f"all processes: {sum(pct for _, pct in split_):.0f} %; load average "
        f"{os.getloadavg()[0]:.1f}):"
    )
    for role, pct in split_:
        if pct >= 0.5:
            print(f"  {role:34s} {pct:5.1f} %")
    other = dict(split_).get(OUTSIDE, 0.0)
    if other > 10:
        print(f"WARNING: other work took {other:.0f} % of a core: these figures are disturbed")
    return Step(
        offered=sockets * rate,
        sent=sent / seconds,
        received=received / seconds,
        forwarded=(c1["forwarded"] - c0["forwarded"]) / seconds,
        applied=(applied1 - applied0) / seconds,
        edge_us=edge_us,
        edge_pct=100 * edge_s / (end - start),
        age_p50=percentile(ages, 0.5) if ages else math.inf,
        age_p99=percentile(ages, 0.99) if ages else math.inf,
        latency_p99=percentile(latencies, 0.99) if latencies else math.inf,
    )


def summarise(steps: list[Step], reference: Reference) -> None:
    print(
        f"reference: a bare websockets server (uvloop, JSON parsed per message) took "
        f"{reference.us:.1f} us of CPU per message at {reference.rate:,.0f} messages/s"
    )
    print(
        "offered/s   sent/s  received/s  forwarded/s  applied/s  edge CPU  us/pos  x ref"
        "  age p50  age p99  latency p99"
    )
    for st in steps:
        print(
            f"{st.offered:9,.0f} {st.sent:8,.0f} {st.received:11,.0f} {st.forwarded:12,.0f} "
            f"{st.applied:10,.0f} {st.edge_pct:7.1f}% {st.edge_us:7.1f} "
            f"{st.edge_us / reference.us:6.2f} {st.age_p50:6.0f}ms {st.age_p99:6.0f}ms "
            f"{st.latency_p99:9.0f}ms"
        )
    fresh = [st.offered for st in steps if st.age_p99 <= FRESH_MS]
    if fresh:
        print(f"saturation point: {max(fresh):,.0f} positions/s offered with p99 age <= 1 s")
    else:
        print("saturation point: below every rate tried (p99 age > 1 s at each)")


# -- the library's own floor: a bare websockets server ---------------------------------------


@dataclass
class Reference:
    us: float  # CPU per received message
    rate: float  # messages/s it received


def raw_server_process(pipe: Connection) -> None:
    """A bare ``websockets`` server (spawned): each message parsed as JSON, nothing else.
    Answers "count" with the messages received so far; any other command ends it."""
    uvloop.run(_raw_serve(pipe))


async def _raw_serve(pipe: Connection) -> None:
    received = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal received
        async for message in ws:
            json.loads(message)
            received += 1

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        pipe.send(next(iter(server.sockets)).getsockname()[1])
        while (await asyncio.to_thread(pipe.recv)) == "count":
            pipe.send(received)


async def raw_reference(
    args: argparse.Namespace, clients: list[LoadClient], run_id: str
) -> Reference:
    """The CPU a bare websockets receive loop spends per message, fed by the same load
    clients at the first rate: the floor the edge's own cost is compared with."""
    rate = args.rates[0]
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=raw_server_process, args=(theirs,), daemon=True)
    process.start()
    try:
        port = await asyncio.to_thread(mine.recv)
        url = f"ws://127.0.0.1:{port}"
        counts = split(args.drivers, len(clients))
        await on_all(
            clients, *(("open", f"raw-{run_id}-{i}", n, url) for i, n in enumerate(counts))
        )
        start = time.time() + 1.0
        driven = asyncio.gather(*(c.ask("drive", start, args.seconds, rate) for c in clients))
        await asyncio.sleep(start - time.time())
        assert process.pid is not None
        mine.send("count")
        n0, cpu0 = await asyncio.to_thread(mine.recv), tree_cpu_s(process.pid)
        await asyncio.sleep(start + args.seconds - time.time())
        mine.send("count")
        n1, cpu1 = await asyncio.to_thread(mine.recv), tree_cpu_s(process.pid)
        await driven
        await on_all(clients, *([("close",)] * len(clients)))
    finally:
        mine.send("stop")
        process.join(5.0)
        if process.is_alive():
            process.terminate()
    received = max(1, n1 - n0)
    reference = Reference(us=1e6 * (cpu1 - cpu0) / received, rate=received / args.seconds)
    print(
        f"reference: bare websockets server, {args.drivers} sockets x {rate:g}/s: received "
        f"{reference.rate:,.0f}/s, {reference.us:.1f} us of CPU per message "
        f"({100 * (cpu1 - cpu0) / args.seconds:.1f} % of a core)"
    )
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drivers", type=int, default=2000)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[5.0],
        help="positions/s per driver socket, one ingest phase each (e.g. 2,4,6,8: the steps to "
        "the saturation point); the first also drives the bare websockets reference",
    )
    parser.add_argument("--hogs", type=int, default=0, help="CPU-burning processes beside it")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=3, help="load client processes")
    parser.add_argument(
        "--edge-workers", type=int, default=1, help="edge worker processes (RIDESHARE_EDGE_WORKERS)"
    )
    args = parser.parse_args()
    with cpu_hogs(args.hogs):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
