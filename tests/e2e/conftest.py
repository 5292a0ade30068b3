"""The whole system as child processes (rideshare.supervisor), driven only through the edge.

Every service gets a free port of its own (so a developer's running stack does not clash),
metrics endpoints are off, and the edge signs tokens with a fixed test secret.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from rideshare.infra import EmbeddedInfra, free_port
from rideshare.settings import ONE_ADDRESS_LOGIN_LIMITS, InfraUrls
from rideshare.supervisor import SERVICE_ORDER, Supervisor

E2E_JWT_SECRET = "e2e-test-secret-" + "s" * 32


@dataclass(frozen=True)
class Stack:
    edge_url: str
    jwt_secret: str
    supervisor: Supervisor
    infra: InfraUrls
    env: Mapping[str, str]  # what the services were started with (ports, secrets)
    stripe_api_base: str

    @property
    def ws_url(self) -> str:
        return self.edge_url.replace("http://", "ws://")


_ENV_URLS = ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")


@pytest.fixture(scope="session")
async def e2e_infra(infra: InfraUrls, infra_dir: Path) -> AsyncIterator[InfraUrls]:
    """Servers of the e2e system's own. The system lives for the whole session; on the shared
    servers its consumers would take, and its notification service would push, the events
    that the integration tests' own service copies are waiting for."""
    if all(os.environ.get(n) for n in _ENV_URLS):
        yield infra  # servers given from outside: share them
        return
    embedded = EmbeddedInfra(infra_dir / "e2e-infra", durable=False)
    try:
        yield await embedded.start()
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def stack(e2e_infra: InfraUrls, infra_dir: Path) -> AsyncIterator[Stack]:
    """Every service running as a subprocess; one that does not start fails the session."""
    infra = e2e_infra
    names = SERVICE_ORDER
    ports = {name: free_port() for name in SERVICE_ORDER}
    env = {
        "RIDESHARE_DATA_DIR": str(infra_dir / "e2e"),
        "RIDESHARE_JWT_SECRET": E2E_JWT_SECRET,
        "RIDESHARE_SHUTDOWN_GRACE_S": "1",
        "RIDESHARE_OFFER_TIMEOUT_S": "20",
        "RIDESHARE_EDGE_PORT": str(ports["edge"]),
        "RIDESHARE_RATE_PER_IP": "10000",
        "RIDESHARE_BURST_PER_IP": "10000",
        # the OpenAPI fuzz pass sends hundreds of requests a second with one rider's token
        "RIDESHARE_RATE_PER_TOKEN": "10000",
        "RIDESHARE_BURST_PER_TOKEN": "10000",
        # every test's phones sign up and log in from 127.0.0.1
        **ONE_ADDRESS_LOGIN_LIMITS,
    }
    for name in SERVICE_ORDER:
        if name != "edge":
            upper = name.upper()
            env[f"RIDESHARE_{upper}_PORT"] = str(ports[name])
            env[f"RIDESHARE_{upper}_METRICS_PORT"] = "0"
    supervisor = Supervisor(infra, extra_env=env, ready_timeout_s=60.0)
    try:
        for name in names:
            await supervisor.start(name)
        yield Stack(
            f"http://127.0.0.1:{ports['edge']}",
            E2E_JWT_SECRET,
            supervisor,
            infra,
            env,
            infra.stripe_api_base,
        )
    finally:
        await supervisor.stop_all(grace_s=10.0)
