"""Keepalive without fights (rideshare/keepalive.py): an idle server-streaming call outlives
several keepalive periods while the client's event loop is blocked, and the server never
answers the client's pings with GOAWAY too_many_pings."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rideshare.grpc_client import make_channel
from rideshare.keepalive import Keepalive

SHORT = Keepalive(time_s=0.3, timeout_s=2.0)
# Blocked for this many client keepalive periods.
STALL_S = 15 * SHORT.time_s
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def idle_server(keepalive_s: float) -> AsyncIterator[tuple[int, int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.idle_server",
        str(keepalive_s),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            port = int(await process.stdout.readline())
        yield process.pid, port
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            await process.wait()


@pytest.fixture
async def agreed_server() -> AsyncIterator[tuple[int, int]]:
    """A server in its own process with the clients' policy."""
    async for pid_port in idle_server(SHORT.time_s):
        yield pid_port


@pytest.fixture
async def strict_server() -> AsyncIterator[tuple[int, int]]:
    """A server that tolerates a ping every 5 minutes: what the misnamed option left."""
    async for pid_port in idle_server(600.0):
        yield pid_port


async def watch_through_a_stall(pid: int, port: int) -> int:
    """Open a health Watch, block this loop for STALL_S while the stream is idle, then have
    the server change status; the status the stream shows afterwards."""
    async with make_channel(f"127.0.0.1:{port}", keepalive=SHORT) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=120
        )
        assert (await watch.read()).status == SERVING
        time.sleep(STALL_S)  # noqa: ASYNC251 - the point: the client's loop is stalled
        os.kill(pid, signal.SIGUSR1)
        async with asyncio.timeout(30):
            status: int = (await watch.read()).status
        watch.cancel()
        return status


async def test_an_idle_stream_outlives_a_stalled_client_loop_without_a_goaway(
    agreed_server: tuple[int, int], capfd: pytest.CaptureFixture[str]
) -> None:
    assert await watch_through_a_stall(*agreed_server) == NOT_SERVING
    logged = capfd.readouterr().err
    assert "too_many_pings" not in logged and "GOAWAY" not in logged, logged


async def test_a_server_stricter_than_the_clients_keepalive_ends_the_stream(
    strict_server: tuple[int, int],
) -> None:
    """The fight the shared policy prevents, shown to be one this test would catch."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await watch_through_a_stall(*strict_server)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "too many pings" in (failed.value.details() or "").lower()
