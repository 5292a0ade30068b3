"""What every benchmark needs: real servers, one service as a child process, percentiles, a
raw reference to print its figure against, and the search for its saturation point."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psutil

from rideshare.credentials import hash_password
from rideshare.identity import INTERNAL_SECRET_ENV, process_secret
from rideshare.infra import EmbeddedInfra
from rideshare.settings import InfraUrls
from rideshare.supervisor import grpc_healthy

__all__ = [
    "HOG",
    "SaturationResult",
    "SaturationSearch",
    "Step",
    "cpu_hogs",
    "http_per_s",
    "infrastructure",
    "open_loop",
    "percentile",
    "print_login_references",
    "print_reference",
    "print_saturation",
    "saturation",
    "scrypt_per_s",
    "service_process",
    "wait_healthy",
]

HOG = "while True: pass"
_ENV_URLS = ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """``count`` processes burning a CPU each (other work on the machine), killed on exit."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.asynccontextmanager
async def infrastructure() -> AsyncIterator[InfraUrls]:
    """The RIDESHARE_* servers when all are given, else embedded ones in a temporary dir."""
    if all(os.environ.get(n) for n in _ENV_URLS):
        redis_url, postgres_dsn, nats_url = (os.environ[n] for n in _ENV_URLS)
        yield InfraUrls(
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            nats_url=nats_url,
            stripe_api_base=os.environ.get("RIDESHARE_STRIPE_API_BASE", ""),
        )
        return
    directory = Path(tempfile.mkdtemp(prefix="rideshare-bench-"))
    os.chmod(directory, 0o755)  # PostgreSQL runs as another user and must reach it
    embedded = EmbeddedInfra(directory, durable=False)
    try:
        yield await embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def service_process(
    name: str, urls: InfraUrls, *, port: int, env: Mapping[str, str] = {}
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m <name>`` on ``port`` with the given servers (metrics off, quiet logs) and
    this process's internal secret (its calls come as the operator), stopped with SIGTERM
    (SIGKILL after 15 s) when the context exits."""
    upper = name.upper()
    own = urls.for_service(name)  # the service's own users, as `rideshare up` runs it
    process = subprocess.Popen(
        [sys.executable, "-m", name],
        env={
            **os.environ,
            "RIDESHARE_REDIS_URL": own.redis_url,
            "RIDESHARE_POSTGRES_DSN": own.postgres_dsn,
            "RIDESHARE_NATS_URL": own.nats_url,
            "RIDESHARE_STRIPE_API_BASE": own.stripe_api_base,
            f"RIDESHARE_{upper}_PORT": str(port),
            f"RIDESHARE_{upper}_METRICS_PORT": "0",
            "RIDESHARE_LOG_LEVEL": "WARNING",
            INTERNAL_SECRET_ENV: process_secret(),
            **env,
        },
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_healthy(target: str, timeout_s: float = 30.0) -> None:
    """Until the gRPC server at ``target`` reports SERVING."""
    async with asyncio.timeout(timeout_s):
        while not await grpc_healthy(target):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)


# --- reference and saturation --------------------------------------------------------------
#
# Hosts differ by 2x or more from one day to the next, so a figure alone compares with
# nothing: each bench also measures a raw loop on the same servers in the same run and prints
# its figure as a ratio to it, and finds the highest offered rate whose p99 stays within the
# bench's target, since a fixed rate that fits a fast host queues for seconds on a slow one.


@dataclass(frozen=True)
class Step:
    """One short run at a fixed offered rate (per second)."""

    offered: float
    achieved: float
    p99_s: float


@dataclass(frozen=True)
class SaturationResult:
    """Every step tried, in order, and the verdict on each against ``target_p99_s``."""

    target_p99_s: float
    steps: tuple[Step, ...]
    shortfall: float = 0.9

    def passes(self, step: Step) -> bool:
        return step.p99_s <= self.target_p99_s and step.achieved >= self.shortfall * step.offered

    @property
    def best(self) -> Step | None:
        """The highest offered rate that passed, or None when none did."""
        passed = [s for s in self.steps if self.passes(s)]
        return max(passed, key=lambda s: s.offered) if passed else None


class SaturationSearch:
    """Which rate to try next: double from ``start`` while steps pass, then bisect between
    the last pass and the first failure ``bisections`` times. Pure; :func:`saturation` runs it.

    A step fails when its p99 exceeds the target or its achieved rate falls below
    ``shortfall`` of the offered one (the system fell behind: latency measured on what got
    through would flatter it). A first step that fails is bisected towards zero.
    """

    def __init__(
        self,
        *,
        start: float,
        target_p99_s: float,
        max_rate: float,
        bisections: int = 3,
        shortfall: float = 0.9,
    ) -> None:
        if start <= 0 or max_rate < start:
            raise ValueError(f"need 0 < start <= max_rate, got start={start} max_rate={max_rate}")
        self.result = SaturationResult(target_p99_s, (), shortfall)
        self._next: float | None = start
        self._max = max_rate
        self._low = 0.0  # highest passing rate so far
        self._high: float | None = None  # lowest failing rate so far
        self._bisections_left = bisections

    def next_rate(self) -> float | None:
        """The rate of the next step, or None when the search is over."""
        return self._next

    def record(self, step: Step) -> None:
        self.result = replace(self.result, steps=(*self.result.steps, step))
        if self.result.passes(step):
            self._low = max(self._low, step.offered)
        else:
            self._high = step.offered if self._high is None else min(self._high, step.offered)
        if self._high is None:
            self._next = min(self._low * 2, self._max) if self._low < self._max else None
            return
        if self._bisections_left == 0:
            self._next = None
            return
        self._bisections_left -= 1
        self._next = (self._low + self._high) / 2


async def saturation(
    run_step: Callable[[float], Awaitable[Step]],
    *,
    start: float,
    target_p99_s: float,
    max_rate: float,
    bisections: int = 3,
) -> SaturationResult:
    """Run ``run_step(rate)`` at the rates :class:`SaturationSearch` picks; every step is
    printed as it ends."""
    search = SaturationSearch(
        start=start, target_p99_s=target_p99_s, max_rate=max_rate, bisections=bisections
    )
    while (rate := search.next_rate()) is not None:
        step = await run_step(rate)
        search.record(step)
        verdict = "ok" if search.result.passes(step) else "over"
        print(f"  step {step.offered:,.1f}/s: achieved {step.achieved:,.1f}/s, "
              f"p99 {step.p99_s * 1000:,.1f} ms: {verdict}", flush=True)  # fmt: skip
    return search.result


def print_saturation(name: str, result: SaturationResult, unit: str = "/s") -> None:
    """One line: the highest offered rate within the target, and the first one beyond it."""
    best = result.best
    over = [s.offered for s in result.steps if not result.passes(s)]
    beyond = f", first over at {min(over):,.1f}{unit}" if over else ", none over (max tried)"
    if best is None:
        print(f"saturation: {name}: no rate tried kept p99 <= "
              f"{result.target_p99_s * 1000:,.0f} ms{beyond}", flush=True)  # fmt: skip
        return
    print(f"saturation: {name}: {best.offered:,.1f}{unit} with p99 "
          f"{best.p99_s * 1000:,.1f} ms <= {result.target_p99_s * 1000:,.0f} ms "
          f"({len(result.steps)} steps){beyond}", flush=True)  # fmt: skip


def print_reference(
    name: str, ours: float, raw: float, unit: str, *, raw_name: str, raw_unit: str | None = None
) -> None:
    """Our figure, the raw loop's on the same host in the same run, and their ratio."""
    ratio = ours / raw if raw else math.nan
    print(f"reference: {name} {ours:,.1f} {unit}; {raw_name} {raw:,.1f} {raw_unit or unit}; "
          f"ratio {ratio:.3g}", flush=True)  # fmt: skip


async def open_loop(
    call: Callable[[], Awaitable[bool]], *, rate: float, seconds: float
) -> tuple[Step, list[float]]:
    """``call()`` at ``rate`` per second for ``seconds``, on schedule whether or not earlier
    calls answered. A call returns whether it succeeded; a failed one counts in p99 as
    infinitely slow, so errors cannot flatter a step. Achieved = successes per second over
    the longer of the sends' and the answers' spans (plus one interval): a fixed latency, such
    as a dispatch window's, delays every answer alike and does not count as lost throughput,
    while a backlog spreads the answers out. Also returns the successes' latencies (ms)."""
    latencies: list[float] = []
    answered: list[float] = []
    failures = 0

    async def one() -> None:
        nonlocal failures
        began = time.perf_counter()
        try:
            ok = await call()
        except Exception:  # any failure is a failed request of the step, counted
            ok = False
        if ok:
            answered.append(time.perf_counter())
            latencies.append((answered[-1] - began) * 1000)
        else:
            failures += 1

    tasks = []
    start = time.perf_counter()
    for i in range(max(1, int(rate * seconds))):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    answers = max(answered) - min(answered) if answered else 0.0
    elapsed = max((len(tasks) - 1) / rate, answers) + 1 / rate
    samples = [*latencies, *([math.inf] * failures)]
    p99 = percentile(samples, 0.99) / 1000
    return Step(offered=rate, achieved=len(latencies) / elapsed, p99_s=p99), latencies


def scrypt_per_s(seconds: float = 2.0) -> float:
    """Password hashes per second on one thread with the services' own scrypt parameters."""
    done = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        hash_password("bench-reference-1")
        done += 1
    return done / (time.perf_counter() - started)


async def print_login_references(edge_url: str, *, seconds: float) -> float:
    """The raw references of the sign-up and login benches, printed: scrypt on one thread
    (each sign-up or login costs one) and a bare HTTP loop against the edge. Returns the
    scrypt rate, which their figures are a ratio to."""
    scrypt = scrypt_per_s(seconds)
    bare = await http_per_s(edge_url, seconds=seconds)
    print(f"reference: scrypt {scrypt:,.1f} hashes/s on one thread; bare HTTP to the edge "
          f"{bare:,.0f} answers/s (8 clients)", flush=True)  # fmt: skip
    return scrypt


async def http_per_s(base_url: str, *, seconds: float = 2.0, clients: int = 8) -> float:
    """Answers per second to ``clients`` back-to-back loops of GET on a path no route
    serves (a 404 the web stack makes itself: no upstream, no store)."""
    done = 0
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as http:

        async def loop(end: float) -> None:
            nonlocal done
            while time.perf_counter() < end:
                await http.get("/bench-reference")
                done += 1

        started = time.perf_counter()
        end = started + seconds
        await asyncio.gather(*(loop(end) for _ in range(clients)))
        return done / (time.perf_counter() - started)


# -- process trees (a service and its workers) -----------------------------------------------


def process_tree(root: int) -> list[psutil.Process]:
    """``root`` and every process below it that is still there."""
    try:
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it (e.g. edge workers)."""
    total = 0.0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_kib(root: int) -> int:
    """The resident memory of ``root`` and every process below it, in KiB."""
    total = 0
    for process in process_tree(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss // 1024
    return total
