"""Benchmark of overload: a flood of driver sign-ups, and a cheap call beside it.

    .venv/bin/python -m scripts.bench.signups [--workers 48] [--seconds 15] [--hogs 0]

Starts its own embedded Redis / PostgreSQL / NATS (or uses RIDESHARE_* URLs), then every
service as a child process (rideshare.supervisor; the edge is healthy once all its upstreams
are), and drives the edge over HTTP only. ``--workers`` clients sign drivers up back to back
for ``--seconds`` (each sign-up costs one scrypt in the driver service), while one driver
calls ``GET /v1/drivers/me`` and ``POST /v1/drivers/me/online`` (the same upstream, no KDF)
one after the other. ``--hogs`` processes burn a CPU each meanwhile, as other work on a
shared machine does.

Reported: sign-ups/s that succeeded, how many were refused (429, the KDF queue was full) or
failed otherwise, and the cheap calls' statuses and latency percentiles. A refused client waits
what Retry-After says (with jitter) before its next try, as the apps do. Asserts no target.

Before the flood, on the same host in the same run: the raw references, scrypt hashes/s on one
thread with the services' parameters (each sign-up costs one) and a bare HTTP loop against the
edge (a path no route serves); and the saturation point, the highest offered sign-up rate
(short open-loop steps, doubling then bisecting) the edge answers 201 with p99 within
``--target-ms``. The target, 1 s by default, is ours: no document states one; it is what a
person tapping "sign up" waits without thinking the app hangs, and a refusal (429) counts as
a miss, so the point is where the bounded KDF queue starts turning people away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx

from rideshare.infra import free_port
from rideshare.settings import ONE_ADDRESS_LOGIN_LIMITS, InfraUrls
from rideshare.supervisor import SERVICE_ORDER, Supervisor
from scripts.bench.common import (
    Step,
    cpu_hogs,
    infrastructure,
    open_loop,
    percentile,
    print_login_references,
    print_reference,
    print_saturation,
    saturation,
)

SECRET = "bench-signups-secret-" + "k" * 32
PASSWORD = "bench-password-1"


@contextlib.asynccontextmanager
async def system(urls: InfraUrls) -> AsyncIterator[str]:
    # Every service, not only rider and driver: the edge is healthy when all its upstreams are.
    names = SERVICE_ORDER
    ports = {name: free_port() for name in names}
    env = {
        "RIDESHARE_JWT_SECRET": SECRET,
        "RIDESHARE_LOG_LEVEL": "WARNING",
        "RIDESHARE_SHUTDOWN_GRACE_S": "2",
        "RIDESHARE_EDGE_PORT": str(ports["edge"]),
        "RIDESHARE_RATE_PER_IP": "1000000",
        "RIDESHARE_BURST_PER_IP": "1000000",
        **ONE_ADDRESS_LOGIN_LIMITS,
        "RIDESHARE_RATE_PER_TOKEN": "1000000",
        "RIDESHARE_BURST_PER_TOKEN": "1000000",
    }
    for name in names:
        if name != "edge":
            env[f"RIDESHARE_{name.upper()}_PORT"] = str(ports[name])
            env[f"RIDESHARE_{name.upper()}_METRICS_PORT"] = "0"
    supervisor = Supervisor(urls, extra_env=env, ready_timeout_s=90)
    try:
        for name in names:
            await supervisor.start(name)
        yield f"http://127.0.0.1:{ports['edge']}"
    finally:
        await supervisor.stop_all(grace_s=10)


def new_driver() -> dict[str, str]:
    phone = "+49170" + str(uuid.uuid4().int)[:8]
    return {"name": "Bench", "phone": phone, "password": PASSWORD, "license_number": "L-1"}


async def online_driver(http: httpx.AsyncClient) -> str:
    body = new_driver()
    (await http.post("/v1/drivers", json=body, timeout=30)).raise_for_status()
    r = await http.post(
        "/v1/auth/token",
        json={"phone": body["phone"], "password": PASSWORD, "role": "driver"},
        timeout=30,
    )
    r.raise_for_status()
    token = str(r.json()["access_token"])
    vehicle = {
        "make": "Skoda",
        "model": "Octavia",
        "plate": f"B-{uuid.uuid4().hex[:6]}",
        "seats": 4,
        "vehicle_class": "standard",
    }
    auth = {"Authorization": f"Bearer {token}"}
    (await http.post("/v1/drivers/me/vehicles", json=vehicle, headers=auth)).raise_for_status()
    return token


async def references_and_saturation(
    http: httpx.AsyncClient, edge_url: str, args: argparse.Namespace
) -> float:
    """Prints the raw references and the saturation point; returns scrypt hashes/s."""
    scrypt = await print_login_references(edge_url, seconds=args.reference_s)

    async def signup() -> bool:
        r = await http.post("/v1/drivers", json=new_driver(), timeout=30)
        return r.status_code == 201

    async def step(rate: float) -> Step:
        result, _ = await open_loop(signup, rate=rate, seconds=args.step_s)
        return result

    result = await saturation(
        step, start=args.sat_start, target_p99_s=args.target_ms / 1000, max_rate=1_000
    )
    print_saturation("sign-ups answered 201", result)
    if result.best is not None:
        print_reference(
            "saturation sign-ups", result.best.offered, scrypt, "sign-ups/s",
            raw_name="scrypt on one thread", raw_unit="hashes/s",
        )  # fmt: skip
    return scrypt


async def run(args: argparse.Namespace) -> None:
    async with infrastructure() as urls, system(urls) as edge_url:
        limits = httpx.Limits(max_connections=max(64, args.workers + 4))
        async with httpx.AsyncClient(base_url=edge_url, timeout=30.0, limits=limits) as http:
            token = await online_driver(http)
            auth = {"Authorization": f"Bearer {token}"}
            scrypt = await references_and_saturation(http, edge_url, args)
            signups: Counter[int] = Counter()
            cheap: Counter[int] = Counter()
            latencies: list[float] = []

            async def flood(end: float) -> None:
                while time.monotonic() < end:
                    try:
                        r = await http.post("/v1/drivers", json=new_driver())
                    except httpx.HTTPError:
                        signups[0] += 1
                        continue
                    signups[r.status_code] += 1
                    if r.status_code in (429, 503):
                        # As an app does: wait what Retry-After says, with jitter.
                        wait = float(r.headers.get("retry-after", "1"))
                        await asyncio.sleep(wait * random.uniform(0.5, 1.5))

            async def cheap_calls(end: float) -> None:
                while time.monotonic() < end:
                    for method, path in (
                        ("GET", "/v1/drivers/me"),
                        ("POST", "/v1/drivers/me/online"),
                    ):
                        started = time.monotonic()
                        try:
                            r = await http.request(method, path, headers=auth)
                            cheap[r.status_code] += 1
                        except httpx.HTTPError:
                            cheap[0] += 1
                        latencies.append((time.monotonic() - started) * 1000)

            with cpu_hogs(args.hogs):
                end = time.monotonic() + args.seconds
                async with asyncio.TaskGroup() as tg:
                    for _ in range(args.workers):
                        tg.create_task(flood(end))
                    tg.create_task(cheap_calls(end))
    print(f"{args.workers} sign-up clients for {args.seconds:.0f} s beside {args.hogs} CPU hogs")
    others = {status: n for status, n in signups.items() if status not in (201, 429)}
    print(
        f"  sign-ups: {signups[201] / args.seconds:.1f}/s succeeded, "
        f"{signups[429]} refused (429), others {others}"
    )
    print_reference(
        "flood sign-ups", signups[201] / args.seconds, scrypt, "sign-ups/s",
        raw_name="scrypt on one thread", raw_unit="hashes/s",
    )  # fmt: skip
    print(
        f"  cheap calls: {sum(cheap.values())} ({dict(cheap)}), "
        f"p50 {percentile(latencies, 0.5):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms, "
        f"max {max(latencies):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", type=int, default=48, help="concurrent sign-up clients")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--hogs", type=int, default=0, help="CPU-burning processes beside it")
    parser.add_argument("--target-ms", type=float, default=1_000.0, help="sign-up p99 target")
    parser.add_argument("--sat-start", type=float, default=4.0, help="first step, sign-ups/s")
    parser.add_argument("--step-s", type=float, default=3.0, help="seconds per step")
    parser.add_argument("--reference-s", type=float, default=2.0, help="raw loops' seconds")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
