"""Servers of their own for the tests that kill servers, so the session's stay undisturbed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rideshare.infra import EmbeddedInfra
from rideshare.valkey_cluster import ValkeyCluster


@pytest.fixture(scope="session")
async def outage_infra(infra_dir: Path) -> AsyncIterator[EmbeddedInfra]:
    """Real Redis / PostgreSQL / NATS that a test may kill with SIGKILL; a test that kills
    one restarts it (``restart``) before it ends, so the next test finds all three up."""
    embedded = EmbeddedInfra(infra_dir / "outage-infra", durable=False)
    await embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def valkey_cluster(infra_dir: Path) -> AsyncIterator[ValkeyCluster]:
    """A real six-node Valkey Cluster (3 masters + 3 replicas), started once per session and
    only for the tests that ask for it. A test that kills a master waits for its replica to
    take over (``wait_healthy``) before it ends."""
    cluster = ValkeyCluster(infra_dir / "valkey-cluster")
    await cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
