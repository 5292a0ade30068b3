"""Three copies of a real service (notification, each its own process) behind one client
channel built by ``make_channel`` from the address list a setting would hold: the calls are
spread over every copy, go on while one copy is killed, and reach it again once it restarts.

Which copy answered is read from each copy's own ``grpc_server_handled_total`` on its
/metrics endpoint, as an operator's dashboards would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.notification.v1 import notification_pb2 as pb
from protos.notification.v1 import notification_pb2_grpc
from rideshare.grpc_client import make_channel
from rideshare.infra import free_port
from rideshare.settings import InfraUrls
from rideshare.supervisor import Supervisor
from tests.helpers import eventually

NAME = "notification"
LIST = "rideshare.notification.v1.NotificationService/ListNotifications"
COPIES = 3


@dataclass
class Copy:
    """One copy of the service, as its own supervisor's only child."""

    port: int
    metrics_port: int
    supervisor: Supervisor

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.supervisor.start(NAME)

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no drain, no goodbye."""
        process = self.supervisor.child(NAME).process
        os.kill(process.pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            await process.wait()

    async def handled(self, client: httpx.AsyncClient) -> int:
        """ListNotifications calls this copy answered OK since it started."""
        reply = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
        reply.raise_for_status()
        for family in text_string_to_metric_families(reply.text):
            for sample in family.samples:
                if (
                    sample.name == "grpc_server_handled_total"
                    and sample.labels.get("grpc_method") == "ListNotifications"
                    and sample.labels.get("grpc_code") == "OK"
                ):
                    return int(sample.value)
        return 0


@pytest.fixture
async def copies(infra: InfraUrls, unique_name: str) -> AsyncIterator[list[Copy]]:
    started: list[Copy] = []
    for _ in range(COPIES):
        port, metrics_port = free_port(), free_port()
        env = {
            "RIDESHARE_NOTIFICATION_PORT": str(port),
            "RIDESHARE_NOTIFICATION_METRICS_PORT": str(metrics_port),
            # One schema and one durable consumer: copies of one service, not three services.
            "RIDESHARE_NOTIFICATION_SCHEMA": unique_name,
            "RIDESHARE_NOTIFICATION_DURABLE": unique_name,
            "RIDESHARE_SHUTDOWN_GRACE_S": "1",
        }
        supervisor = Supervisor(infra, extra_env=env, ready_timeout_s=120.0)
        started.append(Copy(port, metrics_port, supervisor))
    try:
        await asyncio.gather(*(copy.start() for copy in started))
        yield started
    finally:
        await asyncio.gather(*(copy.supervisor.stop_all(grace_s=10.0) for copy in started))


async def _calls(stub: notification_pb2_grpc.NotificationServiceAsyncStub, n: int) -> None:
    """``n`` reads, one after another; every one must succeed."""
    for _ in range(n):
        await stub.ListNotifications(pb.ListNotificationsRequest(user_id="rider-1", page_size=1))


async def _counts(copies: list[Copy], client: httpx.AsyncClient) -> list[int]:
    return list(await asyncio.gather(*(copy.handled(client) for copy in copies)))


async def test_calls_spread_over_every_copy_survive_a_killed_one_and_reach_it_again(
    copies: list[Copy],
) -> None:
    target = ",".join(copy.address for copy in copies)
    async with (
        make_channel(target, idempotent_methods=[LIST], default_timeout_s=30.0) as channel,
        httpx.AsyncClient() as client,
    ):
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        async with asyncio.timeout(120):
            await _calls(stub, 300)
        spread = await _counts(copies, client)
        print(f"\n300 calls over {COPIES} copies: {spread}")
        assert sum(spread) == 300
        assert min(spread) >= 50, spread  # round_robin: about 100 each

        await copies[0].kill()
        before = await _counts(copies[1:], client)
        async with asyncio.timeout(120):
            await _calls(stub, 150)  # retried on another copy when one meets the dead one
        after = await _counts(copies[1:], client)
        gained = [a - b for a, b in zip(after, before, strict=True)]
        print(f"150 calls with copy 0 killed: {gained}")
        assert sum(gained) == 150
        assert min(gained) > 0, gained

        await copies[0].start()  # on its old port, ready (healthy) when this returns
        back_at = time.monotonic()

        async def reached_again() -> bool:
            await _calls(stub, 3)
            return await copies[0].handled(client) > 0

        await eventually(reached_again, timeout_s=60.0, every_s=0.05)
        print(f"restarted copy called again {time.monotonic() - back_at:.2f}s after it was ready")
        async with asyncio.timeout(120):
            await _calls(stub, 300)
        final = await _counts(copies, client)
        print(f"then 300 more over {COPIES} copies (copy 0 counted since its restart): {final}")
        assert final[0] >= 50, final


async def test_a_dns_name_is_a_target_too() -> None:
    """``dns:///name:port``, as a headless Service names its pods: here ``localhost``, which
    may resolve to ::1 as well, where nothing listens; round_robin uses what answers."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with make_channel(f"dns:///localhost:{port}", default_timeout_s=30.0) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
