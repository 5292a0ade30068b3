"""Benchmark of dispatch policies: nearest-first against windowed batch matching, in the same
city with the same seed and load, in a supply-constrained city and a relaxed one.

    .venv/bin/python -m scripts.bench.dispatch [--duration 60] [--window 1.0] [--only constrained]

Starts its own embedded Redis, Postgres and NATS (or uses RIDESHARE_* URLs) and, for each
city and policy, the whole system as child processes (``rideshare.supervisor``), with
``RIDESHARE_DISPATCH_WINDOW_S`` 0 (nearest-first) or ``--window`` (batch), and runs
``rideshare simulate`` against it: the simulated drivers drive to each pickup, so pickup
distance and time are what the phones lived, not the matcher's estimate. Prints, per city, the
two policies side by side: mean and p90 pickup distance and pickup time, rider wait (request
-> driver at the pickup, simulated seconds: a window of W wall seconds is W x speedup of them),
share of requests matched, request -> accept (wall ms), and the change batch made.

Also, before the runs, with no servers:

1. reference: ``scipy.optimize.linear_sum_assignment`` alone on a random 20 x 50 matrix,
   against ``trip.matcher.match`` on 20 trips and 50 drivers (the matrix built from
   positions, the solve, the ranked candidates), in the same process;
2. saturation: the most trips one region's window may hold (50 drivers, the most one search
   returns) with the matcher's p99 within ``--solve-target-ms``; the dispatcher falls back to
   nearest-first above ``RIDESHARE_DISPATCH_MAX_PAIRS``, which this tells how to set.

Nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from rideshare.infra import free_port
from rideshare.settings import ONE_ADDRESS_LOGIN_LIMITS, InfraUrls
from rideshare.simulate.city import BBox
from rideshare.simulate.config import SimConfig
from rideshare.simulate.runner import run as simulate
from rideshare.supervisor import SERVICE_ORDER, Supervisor, available_services
from scripts.bench.common import (
    Step,
    infrastructure,
    percentile,
    print_reference,
    print_saturation,
    saturation,
)
from trip.matcher import CostModel, DriverHit, WaitingTrip, match
from trip.pricing import LatLng, VehicleClass

SECRET = "bench-secret-" + "d" * 40
# A 4 x 4 km centre of Berlin: small enough that several requests of a window compete for
# the same drivers.
CENTRE = BBox(52.500, 13.370, 52.536, 13.430)

CITIES: dict[str, dict[str, Any]] = {
    # More requests than idle drivers nearby: most drivers are busy most of the time.
    "constrained": {"drivers": 20, "riders": 40, "rate": 1.5},
    # Plenty of idle drivers for every request.
    "relaxed": {"drivers": 60, "riders": 15, "rate": 0.5},
}


def solve_sample(rng: random.Random, trips: int, drivers: int) -> tuple[float, float]:
    """(seconds of ``match`` on random positions, seconds of the bare solver on a random
    matrix of the same shape)."""
    model = CostModel()

    def point() -> LatLng:
        return LatLng(rng.uniform(CENTRE.min_lat, CENTRE.max_lat), rng.uniform(13.37, 13.43))

    waiting = [WaitingTrip(f"t{i}", point(), VehicleClass.STANDARD) for i in range(trips)]
    hits = [DriverHit(f"d{i}", point(), VehicleClass.STANDARD) for i in range(drivers)]
    began = time.perf_counter()
    match(waiting, hits, model)
    ours = time.perf_counter() - began
    matrix = np.array([[rng.random() for _ in range(drivers)] for _ in range(trips)])
    began = time.perf_counter()
    linear_sum_assignment(matrix)
    return ours, time.perf_counter() - began


async def matcher_figures(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    samples = [solve_sample(rng, 20, 50) for _ in range(200)]
    ours = sorted(s[0] for s in samples)
    raw = sorted(s[1] for s in samples)
    print_reference(
        "trip.matcher.match, 20 trips x 50 drivers, p50",
        percentile(ours, 0.5) * 1e6,
        percentile(raw, 0.5) * 1e6,
        "us",
        raw_name="linear_sum_assignment alone on 20 x 50, p50",
    )

    async def step(trips: float) -> Step:
        n = max(1, int(trips))
        times = [solve_sample(rng, n, 50)[0] for _ in range(30)]
        return Step(offered=n, achieved=n, p99_s=percentile(times, 0.99))

    result = await saturation(
        step, start=8, target_p99_s=args.solve_target_ms / 1000, max_rate=2000, bisections=3
    )
    print_saturation("trips in one region's window (50 drivers)", result, unit=" trips")


@contextlib.asynccontextmanager
async def system(urls: InfraUrls, window_s: float) -> AsyncIterator[str]:
    """The whole system with the given dispatch window; yields the edge's URL."""
    ports = {name: free_port() for name in SERVICE_ORDER}
    env = {
        "RIDESHARE_JWT_SECRET": SECRET,
        "RIDESHARE_LOG_LEVEL": "WARNING",
        "RIDESHARE_SHUTDOWN_GRACE_S": "2",
        "RIDESHARE_EDGE_PORT": str(ports["edge"]),
        "RIDESHARE_RATE_PER_IP": "1000000",
        "RIDESHARE_BURST_PER_IP": "1000000",
        **ONE_ADDRESS_LOGIN_LIMITS,
        "RIDESHARE_DISPATCH_WINDOW_S": str(window_s),
        # One region for the small city, so the window sees all of its requests at once.
        "RIDESHARE_DISPATCH_REGION_RES": "5",
    }
    for name in SERVICE_ORDER:
        if name != "edge":
            env[f"RIDESHARE_{name.upper()}_PORT"] = str(ports[name])
            env[f"RIDESHARE_{name.upper()}_METRICS_PORT"] = "0"
    supervisor = Supervisor(urls, extra_env=env, ready_timeout_s=120)
    try:
        for name in available_services():
            await supervisor.start(name)
        yield f"http://127.0.0.1:{ports['edge']}"
    finally:
        await supervisor.stop_all(grace_s=10)


async def one_run(
    urls: InfraUrls, args: argparse.Namespace, city: str, window_s: float
) -> dict[str, Any]:
    async with system(urls, window_s) as edge_url:
        cfg = SimConfig(
            edge_url=edge_url,
            stripe_api_base=urls.stripe_api_base,
            duration_s=args.duration,
            drain_s=args.drain,
            speedup=args.speedup,
            accept_prob=1.0,
            cancel_prob=0.0,
            seed=args.seed,
            city=CENTRE,
            view="none",
            **CITIES[city],
        )
        summary = await simulate(cfg)
    return summary


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def print_comparison(city: str, runs: dict[str, dict[str, Any]]) -> None:
    spec = CITIES[city]
    print(
        f"\n{city}: {spec['drivers']} drivers, {spec['riders']} riders, {spec['rate']} requests/s",
        flush=True,
    )
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("pickup distance mean (m)", lambda s: s["dispatch"]["pickup_distance_m"]["mean"]),
        ("pickup distance p90 (m)", lambda s: s["dispatch"]["pickup_distance_m"]["p90"]),
        ("pickup time mean (sim s)", lambda s: s["dispatch"]["pickup_s"]["mean"]),
        ("pickup time p90 (sim s)", lambda s: s["dispatch"]["pickup_s"]["p90"]),
        ("rider wait mean (sim s)", lambda s: s["dispatch"]["rider_wait_s"]["mean"]),
        ("rider wait p90 (sim s)", lambda s: s["dispatch"]["rider_wait_s"]["p90"]),
        ("matched share (%)", lambda s: 100 * (s["dispatch"]["matched_share"] or 0)),
        ("request -> accept p50 (ms)", lambda s: s["latency_ms"]["request_to_accept"]["p50_ms"]),
        ("request -> accept p90 (ms)", lambda s: s["latency_ms"]["request_to_accept"]["p90_ms"]),
        ("request -> offer p99 (ms)", lambda s: s["latency_ms"]["request_to_offer"]["p99_ms"]),
        ("trips requested", lambda s: s["counters"].get("trips_requested", 0)),
    ]
    print(f"  {'':<30}{'nearest':>12}{'batch':>12}{'change':>10}", flush=True)
    for label, get in rows:
        a, b = get(runs["nearest"]), get(runs["batch"])
        change = f"{(b - a) / a:+.0%}" if a and b is not None else "-"
        print(f"  {label:<30}{_fmt(a):>12}{_fmt(b):>12}{change:>10}", flush=True)


async def run(args: argparse.Namespace) -> None:
    await matcher_figures(args)
    cities = [args.only] if args.only else list(CITIES)
    async with infrastructure() as urls:
        for city in cities:
            runs = {}
            for policy, window in (("nearest", 0.0), ("batch", args.window)):
                print(f"run: {city} city, {policy} (window {window:g} s)...", flush=True)
                runs[policy] = await one_run(urls, args, city, window)
            print_comparison(city, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of requests")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds to finish trips")
    parser.add_argument("--speedup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=1.0, help="batch window, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=list(CITIES), default=None)
    for name in ("drivers", "riders", "rate"):
        parser.add_argument(
            f"--{name}",
            type=float if name == "rate" else int,
            default=None,
            help=f"{name} of every city run (default: the city's own)",
        )
    parser.add_argument("--solve-target-ms", type=float, default=50.0)
    args = parser.parse_args()
    for name in ("drivers", "riders", "rate"):
        if (value := getattr(args, name)) is not None:
            for spec in CITIES.values():
                spec[name] = value
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
