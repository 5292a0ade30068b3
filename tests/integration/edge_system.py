"""The edge over real services, in-process, for the edge's integration tests.

Location, rider, driver and trip run in this process on port 0 with schemas and durable
names of their own; the notification address points at a port nobody listens on, so tests
can see what the edge does when an upstream is down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from edge.app import EdgeServer
from edge.app import running as edge_running
from edge.auth import issue_token
from edge.settings import EdgeSettings, LoginLimits
from rideshare.settings import InfraUrls, ServiceSettings

SECRET = "integration-test-secret-" + "x" * 16
# Every test's phones sign up and log in from 127.0.0.1: the per-address limits are lifted
# (tests of the limits bring an edge of their own); the per-phone ones and the lockout stay.
ONE_ADDRESS = LoginLimits(
    logins_per_min_per_ip=1e6,
    login_burst_per_ip=1_000_000,
    signups_per_min_per_ip=1e6,
    signup_burst_per_ip=1_000_000,
)
BERLIN = (52.5200, 13.4050)


def dead_address() -> str:
    """host:port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@contextlib.contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """Errors and tracebacks logged in this process (the edge's, uvicorn's, asyncio's)
    while the block runs."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)


def describe(records: list[logging.LogRecord]) -> str:
    """What a test prints when errors were logged: each message with its traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in records)


def svc(name: str, infra: InfraUrls) -> ServiceSettings:
    return ServiceSettings(name=name, infra=infra, grpc_port=0, shutdown_grace_s=0.5)


@dataclass
class System:
    infra: InfraUrls
    upstreams: dict[str, str]
    edge: EdgeServer
    settings: EdgeSettings

    @property
    def url(self) -> str:
        return self.edge.url

    @property
    def ws_url(self) -> str:
        return self.edge.url.replace("http://", "ws://")

    def admin_token(self) -> str:
        return issue_token(SECRET, sub=f"admin-{uuid.uuid4().hex[:8]}", role="admin", ttl_s=600)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)

    @contextlib.asynccontextmanager
    async def another_edge(self, **overrides: Any) -> AsyncIterator[EdgeServer]:
        async with edge_running(dataclasses.replace(self.settings, **overrides)) as edge:
            yield edge


@contextlib.asynccontextmanager
async def edge_system(infra: InfraUrls, prefix: str, **trip_settings: Any) -> AsyncIterator[System]:
    """The whole system behind one edge; ``trip_settings`` override the trip service's."""
    from driver.app import running as driver_running
    from location.app import running as location_running
    from rider.app import running as rider_running
    from rider.billing import RetryPolicy
    from rider.payments import WorkerPolicy
    from rider.settings import PaymentSettings
    from trip.app import running as trip_running
    from trip.settings import TripSettings

    async with contextlib.AsyncExitStack() as stack:
        location = await stack.enter_async_context(location_running(svc("location", infra)))
        location_addr = f"127.0.0.1:{location.port}"
        # Declined charges retried fast, so a test sees one end outstanding within seconds.
        payment = PaymentSettings(
            api_base=infra.stripe_api_base,
            worker=WorkerPolicy(retry=RetryPolicy(max_attempts=2, first_delay_s=0.2), poll_s=0.2),
        )
        rider = await stack.enter_async_context(
            rider_running(
                svc("rider", infra), payment, schema=f"{prefix}_rider", durable=f"{prefix}_rider"
            )
        )
        driver = await stack.enter_async_context(
            driver_running(
                svc("driver", infra), schema=f"{prefix}_driver", durable=f"{prefix}_driver"
            )
        )
        trip = await stack.enter_async_context(
            trip_running(
                svc("trip", infra),
                TripSettings(
                    location_addr=location_addr, consumer_name=f"{prefix}_trip", **trip_settings
                ),
                schema=f"{prefix}_trip",
            )
        )
        upstreams = {
            "location": location_addr,
            "rider": f"127.0.0.1:{rider.port}",
            "driver": f"127.0.0.1:{driver.port}",
            "trip": f"127.0.0.1:{trip.port}",
            "notification": dead_address(),
        }
        settings = EdgeSettings(
            infra=infra,
            jwt_secret=SECRET,
            upstreams=upstreams,
            port=0,
            shutdown_grace_s=1.0,
            call_timeout_s=2.0,
            breaker_failures=3,
            breaker_reset_s=30.0,
            rate_per_ip=10_000.0,
            burst_per_ip=10_000,
            rate_per_token=1_000.0,
            burst_per_token=1_000,
            ws_ping_interval_s=0.5,
            logins=ONE_ADDRESS,
        )
        edge = await stack.enter_async_context(edge_running(settings))
        yield System(infra, upstreams, edge, settings)
