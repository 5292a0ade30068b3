"""Valkey and NATS refuse whoever has no password, and each service user is held to its rights
(rideshare/infra_users.py); the files that hold the passwords are private."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import nats
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from rideshare.infra import EmbeddedInfra
from rideshare.infra_users import NATS_USERS
from rideshare.settings import INFRA_FILE, InfraUrls
from tests.helpers import eventually

_ENV_URLS = ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")

pytestmark = pytest.mark.skipif(
    all(os.environ.get(n) for n in _ENV_URLS),
    reason="servers given from outside have their operator's users",
)


def anonymous(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# -- Valkey ----------------------------------------------------------------------------------


async def redis_call(url: str, *command: str) -> object:
    """One command as the URL's user, on a connection of its own."""
    client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    execute = cast(Callable[..., Awaitable[object]], client.execute_command)
    try:
        return await execute(*command)
    finally:
        await client.aclose()


async def test_valkey_refuses_a_client_without_a_password(infra: InfraUrls) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError, match=r"NOAUTH|authenticated"):
        await redis_call(anonymous(infra.redis_url), "SET", "edge:rl:ip:1", "0")


async def test_valkey_refuses_a_wrong_password(infra: InfraUrls) -> None:
    wrong = infra.for_service("edge").redis_url.replace("@", "x@", 1)
    with pytest.raises(redis.exceptions.AuthenticationError, match=r"WRONGPASS|invalid"):
        await redis_call(wrong, "PING")


async def test_valkey_holds_each_service_user_to_its_keys_and_commands(
    infra: InfraUrls, unique_name: str
) -> None:
    edge = infra.for_service("edge").redis_url
    location = infra.for_service("location").redis_url
    assert await redis_call(edge, "SET", f"edge:rl:{unique_name}", "1") is True
    assert await redis_call(location, "SET", f"loc:{unique_name}", "1") is True
    refused = [
        (edge, ("GET", f"loc:{unique_name}")),  # another service's keys
        (location, ("DEL", f"edge:rl:{unique_name}")),
        (edge, ("FLUSHALL",)),  # emptying every bucket at once
        (location, ("CONFIG", "SET", "maxmemory", "1")),
        (edge, ("ACL", "LIST")),
        (location, ("KEYS", "*")),
        (edge, ("PUBLISH", "anything", "x")),
    ]
    for url, command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await redis_call(url, *command)
    assert await redis_call(infra.redis_url, "GET", f"loc:{unique_name}") == b"1"
    assert await redis_call(infra.redis_url, "GET", f"edge:rl:{unique_name}") == b"1"


async def test_services_without_a_valkey_user_cannot_use_it(infra: InfraUrls) -> None:
    trip = infra.for_service("trip").redis_url
    assert urlsplit(trip).password is None
    with pytest.raises(redis.exceptions.AuthenticationError, match=r"NOAUTH|authenticated"):
        await redis_call(trip, "PING")


# -- NATS ------------------------------------------------------------------------------------


async def _ignore(_exc: Exception) -> None:
    return None


async def test_nats_refuses_a_connection_without_credentials(infra: InfraUrls) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = NATS()
    try:
        with pytest.raises(Exception):  # noqa: B017  # nats-py reports it as "no servers"
            await nc.connect(
                anonymous(infra.nats_url),
                connect_timeout=5,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=on_error,
            )
    finally:
        await nc.close()
    assert any("authorization violation" in str(e).lower() for e in errors), errors


class Connection:
    """A NATS connection that keeps the asynchronous errors the server sends it."""

    def __init__(self) -> None:
        self.nc = NATS()
        self.errors: list[str] = []

    async def __aenter__(self) -> Connection:
        return self

    async def connect(self, url: str) -> Connection:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        await self.nc.connect(url, connect_timeout=5, allow_reconnect=False, error_cb=on_error)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.nc.close()

    def violations(self) -> list[str]:
        """The permission errors received, in lower case (as nats-py reports them)."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


@pytest.fixture
async def watcher(infra: InfraUrls) -> AsyncIterator[tuple[NATS, list[Msg]]]:
    """An admin subscription to every subject: what it sees, any service could have seen."""
    nc = await nats.connect(infra.nats_url, connect_timeout=5, error_cb=_ignore)
    seen: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(">", cb=on_msg)
    await nc.flush(timeout=5)
    try:
        yield nc, seen
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("edge", "trip.accepted"),  # pushed to drivers by every edge
        ("edge", "location.driver.{id}"),
        ("edge", "notify.user.{id}"),
        ("rider", "trip.completed"),
        ("location", "notify.user.{id}"),
        ("notification", "location.driver.{id}"),
        ("trip", "driver.offline"),
        ("notification", "$JS.API.STREAM.PURGE.RIDESHARE"),  # the JetStream API: one stream,
        ("edge", "$JS.API.CONSUMER.CREATE.RIDESHARE.spy"),  # and only what the runtime does
    ],
)
async def test_a_service_cannot_publish_where_it_has_no_right(
    infra: InfraUrls, watcher: tuple[NATS, list[Msg]], unique_name: str, user: str, subject: str
) -> None:
    admin, seen = watcher
    subject = subject.format(id=unique_name)
    async with Connection() as service:
        await service.connect(infra.for_service(user).nats_url)
        await service.nc.publish(subject, b"forged")
        await service.nc.flush(timeout=5)
        await eventually(lambda: bool(service.violations()), timeout_s=10)
    assert f'publish to "{subject.lower()}"' in service.violations()[0]
    # A marker sent after the refusal: once it arrives, the forged message would have too.
    marker = f"marker.{unique_name}"
    await admin.publish(marker, b"")
    await eventually(lambda: any(m.subject == marker for m in seen), timeout_s=10)
    assert [m.subject for m in seen if m.data == b"forged"] == []


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("edge", "rider.>"),
        ("edge", "_INBOX.>"),
        ("edge", "$JS.API.>"),
        ("location", "_INBOX.trip.>"),  # another service's replies and fetched events
        ("rider", "notify.user.*"),
    ],
)
async def test_a_service_cannot_subscribe_where_it_has_no_right(
    infra: InfraUrls, user: str, subject: str
) -> None:
    async with Connection() as service:
        await service.connect(infra.for_service(user).nats_url)
        await service.nc.subscribe(subject)
        await service.nc.flush(timeout=5)
        await eventually(lambda: bool(service.violations()), timeout_s=10)
    assert f'subscription to "{subject.lower()}"' in service.violations()[0]


def test_the_edge_publishes_nothing_and_reads_only_what_it_pushes() -> None:
    edge = NATS_USERS["edge"]
    assert edge.publish == ()
    assert sorted(edge.subscribe) == ["location.driver.*", "notify.user.*", "trip.>"]


# -- files -----------------------------------------------------------------------------------


def test_every_file_holding_a_password_is_private(infra_dir: Path) -> None:
    data_dir = infra_dir / "infra"
    secrets = sorted((data_dir / "secrets").iterdir())
    assert {p.name for p in secrets} >= {"valkey-admin", "valkey-edge", "nats-admin", "nats-edge"}
    files = [
        *secrets,
        data_dir / INFRA_FILE,
        data_dir / "redis" / "users.acl",
        data_dir / "nats" / "nats.conf",
        data_dir / "postgres" / "password",
    ]
    modes = {str(p.relative_to(data_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o600"}, modes
    assert oct(stat.S_IMODE((data_dir / "secrets").stat().st_mode)) == "0o700"
    # The ACL file keeps hashes only.
    acl = (data_dir / "redis" / "users.acl").read_text()
    assert (data_dir / "secrets" / "valkey-edge").read_text().strip() not in acl


async def test_restarted_servers_keep_the_credentials(outage_infra: EmbeddedInfra) -> None:
    assert outage_infra.urls is not None
    urls = outage_infra.urls
    for name in ("redis", "nats"):
        os.kill(outage_infra.pid(name), signal.SIGKILL)
        await eventually(lambda: bool(outage_infra.dead()), timeout_s=30)
        await outage_infra.restart(name)
    assert await redis_call(urls.for_service("edge").redis_url, "PING") is True
    async with Connection() as trip:
        await trip.connect(urls.for_service("trip").nats_url)
        await trip.nc.flush(timeout=5)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await redis_call(anonymous(urls.redis_url), "PING")
