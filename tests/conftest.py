"""Session fixtures: real Redis, PostgreSQL and NATS for the whole test run.

The servers are the project's own embedded binaries started on free ports in a temporary
directory, unless ``RIDESHARE_REDIS_URL``, ``RIDESHARE_POSTGRES_DSN`` and
``RIDESHARE_NATS_URL`` are all given, in which case those are used. Tests isolate themselves
with unique names: a Postgres schema, a NATS stream and subject prefix, a Redis database.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from rideshare.infra import EmbeddedInfra
from rideshare.settings import InfraUrls

# One internal secret for the run (rideshare/identity.py): the services the tests start in this
# process and as children, and the tests' own calls as the operator, all sign with it.
os.environ.setdefault("RIDESHARE_INTERNAL_SECRET", secrets.token_urlsafe(48))

_ENV_URLS = ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")
# Redis database 0 is left to whoever shares a given server; tests rotate through 1..15.
_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rideshare-test-"))  # 0700, even as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def infra(infra_dir: Path) -> AsyncIterator[InfraUrls]:
    """URLs of real, running Redis / PostgreSQL / NATS servers for this test session.

    The admin's URLs, with every service's own Valkey and NATS login: a service's settings
    built from them (ServiceSettings, EdgeSettings, the Supervisor's children) connect as
    that service's user, so every test runs with the permissions of rideshare/infra_users.py."""
    if all(os.environ.get(name) for name in _ENV_URLS):
        yield InfraUrls(
            redis_url=os.environ["RIDESHARE_REDIS_URL"],
            postgres_dsn=os.environ["RIDESHARE_POSTGRES_DSN"],
            nats_url=os.environ["RIDESHARE_NATS_URL"],
            stripe_api_base=os.environ.get("RIDESHARE_STRIPE_API_BASE", ""),
        )
        return
    embedded = EmbeddedInfra(infra_dir / "infra", durable=False)
    try:
        yield await embedded.start()
    finally:
        embedded.stop()


@pytest.fixture
def unique_name() -> str:
    """A fresh lowercase identifier, usable as a schema, stream or subject prefix."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_url(infra: InfraUrls) -> AsyncIterator[str]:
    """A Redis URL on a database of its own, emptied before the test."""
    base = infra.redis_url.rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_dbs)}"
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    yield url
