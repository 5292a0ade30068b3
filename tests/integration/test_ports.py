"""A taken port is waited out, then reported with its holder (rideshare/ports.py), for the
gRPC services and the edge alike; the holder is found on this machine's real /proc."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.app import running
from edge.settings import EdgeSettings
from rideshare.grpc_server import GrpcServer
from rideshare.ports import PortInUseError, bind_port, describe_port_holder
from rideshare.settings import InfraUrls

HOLD_S = 1.0


@pytest.fixture
def holder() -> Iterator[socket.socket]:
    """A plain listening socket on a free port: what takes a service's port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def _release_later(sock: socket.socket) -> None:
    await asyncio.sleep(HOLD_S)
    sock.close()


def _this_process() -> str:
    command = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    return f"held by pid {os.getpid()} ({command}"


async def test_grpc_server_starts_once_the_holder_releases_its_port(
    holder: socket.socket,
) -> None:
    port = _port(holder)
    srv = GrpcServer("test", port=port, bind_retry_s=10.0)
    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        release = tasks.create_task(_release_later(holder))
        assert await srv.start() == port
        assert release.done()  # it bound only after the release
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await srv.stop(0)


async def test_grpc_server_names_the_port_and_this_process_when_it_stays_taken(
    holder: socket.socket,
) -> None:
    port = _port(holder)
    srv = GrpcServer("test", port=port, bind_retry_s=0.3)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(PortInUseError) as raised:
                await srv.start()
    finally:
        await srv.stop(0)
    message = str(raised.value)
    assert f"127.0.0.1:{port} is in use, {_this_process()}" in message
    assert "RIDESHARE_BIND_RETRY_S" in message
    assert "\n" not in message


async def test_edge_binding_waits_for_the_holder_to_release_its_port(
    holder: socket.socket,
) -> None:
    port = _port(holder)
    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        release = tasks.create_task(_release_later(holder))
        sockets = await bind_port("127.0.0.1", port, retry_s=10.0)
        assert release.done()
    for sock in sockets:
        assert _port(sock) == port
        sock.close()


async def test_edge_names_the_port_and_this_process_when_it_stays_taken(
    infra: InfraUrls, holder: socket.socket
) -> None:
    port = _port(holder)
    settings = EdgeSettings(
        infra=infra, jwt_secret="s" * 32, port=port, shutdown_grace_s=0.5, bind_retry_s=0.3
    )
    async with asyncio.timeout(10):
        with pytest.raises(PortInUseError) as raised:
            async with running(settings):
                pass
    assert f"127.0.0.1:{port} is in use, {_this_process()}" in str(raised.value)


async def test_service_exits_with_one_line_naming_the_port_and_its_holder(
    infra: InfraUrls, holder: socket.socket
) -> None:
    port = _port(holder)
    env = {
        **os.environ,
        "RIDESHARE_REDIS_URL": infra.redis_url,
        "RIDESHARE_POSTGRES_DSN": infra.postgres_dsn,
        "RIDESHARE_NATS_URL": infra.nats_url,
        "RIDESHARE_LOCATION_PORT": str(port),
        "RIDESHARE_LOCATION_METRICS_PORT": "0",
        "RIDESHARE_BIND_RETRY_S": "0.5",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "location",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1
    last_line = stderr.decode().strip().splitlines()[-1]
    assert last_line.startswith(f"location: 127.0.0.1:{port} is in use, {_this_process()}")


def test_holder_of_a_listening_port_is_this_process(holder: socket.socket) -> None:
    assert describe_port_holder(_port(holder)).startswith(_this_process())


def test_holder_of_an_outgoing_connections_local_port_is_this_process(
    holder: socket.socket,
) -> None:
    # What takes a service's port in practice: some connection's local (ephemeral) port.
    with socket.create_connection(("127.0.0.1", _port(holder)), timeout=5) as client:
        assert describe_port_holder(_port(client)).startswith(_this_process())


def test_holder_of_a_port_nobody_holds_is_unknown() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = _port(sock)
    assert describe_port_holder(port) == "held by another process"
