"""Servers of their own for the tests that kill servers, so the session's stay undisturbed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rideshare.infra import EmbeddedInfra


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
