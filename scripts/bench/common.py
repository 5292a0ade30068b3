"""What every benchmark needs: real servers, one service as a child process, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

from rideshare.identity import INTERNAL_SECRET_ENV, process_secret
from rideshare.infra import EmbeddedInfra
from rideshare.settings import InfraUrls
from rideshare.supervisor import grpc_healthy

__all__ = ["HOG", "cpu_hogs", "infrastructure", "percentile", "service_process", "wait_healthy"]

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
        yield InfraUrls(redis_url=redis_url, postgres_dsn=postgres_dsn, nats_url=nats_url)
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
