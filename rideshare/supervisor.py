"""Run the services as child processes: prefixed logs, readiness checks, ordered shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rideshare.infra import _die_with_parent
from rideshare.settings import SERVICE_PORTS, InfraUrls, service_port

__all__ = ["ServiceProcess", "Supervisor", "available_services", "grpc_healthy", "service_port"]

logger = logging.getLogger(__name__)

# Start order: the services others call come first; the edge, which calls them all, last.
SERVICE_ORDER = ("rider", "driver", "location", "trip", "notification", "edge")


def available_services() -> list[str]:
    """Services whose package is installed (``python -m <name>`` exists)."""
    return [
        name
        for name in SERVICE_ORDER
        if importlib.util.find_spec(name) and importlib.util.find_spec(f"{name}.__main__")
    ]


async def grpc_healthy(target: str, *, timeout_s: float = 1.0) -> bool:
    """True when the server at ``target`` answers grpc.health.v1 Check("") with SERVING."""
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def http_healthy(host: str, port: int, *, timeout_s: float = 1.0) -> bool:
    """True when ``GET /healthz`` answers 200."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return status_line.startswith(b"HTTP/1.1 200")


@dataclass
class ServiceProcess:
    name: str
    process: asyncio.subprocess.Process
    port: int
    pump: asyncio.Task[None]

    async def healthy(self) -> bool:
        if self.name == "edge":
            return await http_healthy("127.0.0.1", self.port)
        return await grpc_healthy(f"127.0.0.1:{self.port}")


class Supervisor:
    """Starts each service with the infrastructure URLs in its environment."""

    def __init__(
        self,
        infra: InfraUrls,
        *,
        extra_env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self._infra = infra
        self._extra_env = dict(extra_env or {})
        self._ready_timeout_s = ready_timeout_s
        self.children: list[ServiceProcess] = []

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._extra_env)
        env["RIDESHARE_REDIS_URL"] = self._infra.redis_url
        env["RIDESHARE_POSTGRES_DSN"] = self._infra.postgres_dsn
        env["RIDESHARE_NATS_URL"] = self._infra.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        # Every service finds the others where this supervisor starts them.
        for name in SERVICE_PORTS:
            env.setdefault(f"RIDESHARE_{name.upper()}_ADDR", f"127.0.0.1:{service_port(name, env)}")
        return env

    async def start(self, name: str) -> ServiceProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env(),
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        pump = asyncio.create_task(_prefix_lines(name, process.stdout))
        child = ServiceProcess(name, process, service_port(name, self._env()), pump)
        self.children.append(child)
        await self._wait_healthy(child)
        return child

    async def _wait_healthy(self, child: ServiceProcess) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        while loop.time() < deadline:
            if child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")
            if await child.healthy():
                logger.info("%s is ready on 127.0.0.1:%s", child.name, child.port)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name} was not healthy within {self._ready_timeout_s:.0f}s")

    async def stop_all(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM in reverse start order (the edge first), SIGKILL after ``grace_s``."""
        for child in reversed(self.children):
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(grace_s):
                        await child.process.wait()
                except TimeoutError:
                    logger.warning("%s did not stop in %.0fs, killing it", child.name, grace_s)
                    child.process.kill()
                    await child.process.wait()
            await child.pump
        self.children.clear()

    def exited(self) -> list[ServiceProcess]:
        return [c for c in self.children if c.process.returncode is not None]


async def _prefix_lines(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:<12}| ".encode()
    out = sys.stdout.buffer
    while line := await stream.readline():
        out.write(prefix + line)
        out.flush()
