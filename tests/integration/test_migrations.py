from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from rideshare.db import InvalidSchemaName, create_pool
from rideshare.migrations import MigrationError, apply_migrations
from rideshare.settings import InfraUrls
from tests.integration.plumbing import schema_pool

SHARED = ["shared/0000_outbox.sql", "shared/0001_processed_events.sql"]


@pytest.fixture
async def pool(infra: InfraUrls, unique_name: str) -> AsyncIterator[asyncpg.Pool]:
    async with schema_pool(infra.postgres_dsn, unique_name) as pool:
        yield pool


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    # Plain CREATE TABLE (no IF NOT EXISTS): applying a file twice would fail loudly.
    (directory / "0001_init.sql").write_text(
        "CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL);\nSELECT pg_sleep(0.2);\n"
    )
    (directory / "0002_colour.sql").write_text("ALTER TABLE widget ADD COLUMN colour text;\n")
    return directory


async def _tables(pool: asyncpg.Pool, schema: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {row["table_name"] for row in rows}


async def test_migrations_apply_to_an_empty_schema_shared_tables_first(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    async with asyncio.timeout(20):
        applied = await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        tables = await _tables(pool, unique_name)
        recorded = await pool.fetch(
            "SELECT version, name FROM schema_migrations ORDER BY applied_at, version"
        )

    assert applied == [*SHARED, "0001_init.sql", "0002_colour.sql"]
    assert {"outbox", "processed_events", "widget", "schema_migrations"} <= tables
    assert [r["version"] for r in recorded] == ["shared/0000", "shared/0001", "0001", "0002"]


async def test_running_migrations_again_applies_nothing(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    async with asyncio.timeout(20):
        await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        again = await apply_migrations(pool, schema=unique_name, directory=migrations_dir)

    assert again == []


async def test_a_new_file_is_applied_on_the_next_run(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    async with asyncio.timeout(20):
        await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        (migrations_dir / "0003_index.sql").write_text("CREATE INDEX widget_name ON widget (name);")
        applied = await apply_migrations(pool, schema=unique_name, directory=migrations_dir)

    assert applied == ["0003_index.sql"]


async def test_two_copies_starting_at_once_apply_each_file_once(
    infra: InfraUrls, pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    # Two pools: two service copies, each with its own connections.
    async with asyncio.timeout(30):
        other = await create_pool(infra.postgres_dsn, schema=unique_name, max_size=2)
        try:
            first, second = await asyncio.gather(
                apply_migrations(pool, schema=unique_name, directory=migrations_dir),
                apply_migrations(other, schema=unique_name, directory=migrations_dir),
            )
        finally:
            await other.close()
        count = await pool.fetchval("SELECT count(*) FROM schema_migrations")

    assert sorted(first + second) == sorted([*SHARED, "0001_init.sql", "0002_colour.sql"])
    assert [] in (first, second)
    assert count == 4


async def test_a_changed_applied_file_is_an_error_naming_it(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    async with asyncio.timeout(20):
        await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        (migrations_dir / "0002_colour.sql").write_text("ALTER TABLE widget ADD COLUMN size int;")
        (migrations_dir / "0003_later.sql").write_text("CREATE TABLE later (id int);")

        with pytest.raises(MigrationError, match=r"0002_colour\.sql"):
            await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        tables = await _tables(pool, unique_name)

    assert "later" not in tables  # nothing applied once the check failed


async def test_a_failing_file_is_rolled_back_and_not_recorded(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_broken.sql").write_text(
        "CREATE TABLE half (id int);\nSELECT * FROM no_such_table;\n"
    )
    async with asyncio.timeout(20):
        with pytest.raises(asyncpg.UndefinedTableError):
            await apply_migrations(pool, schema=unique_name, directory=migrations_dir)
        versions = await pool.fetch("SELECT version FROM schema_migrations")
        tables = await _tables(pool, unique_name)

    assert "0003" not in {row["version"] for row in versions}
    assert "half" not in tables
    assert "widget" in tables  # the files before it stay applied


async def test_a_misnamed_file_is_rejected(
    pool: asyncpg.Pool, unique_name: str, migrations_dir: Path
) -> None:
    (migrations_dir / "3_oops.sql").write_text("SELECT 1;")

    async with asyncio.timeout(10):
        with pytest.raises(MigrationError, match=r"3_oops\.sql"):
            await apply_migrations(pool, schema=unique_name, directory=migrations_dir)


@pytest.mark.parametrize("schema", ["Trip", "trip; DROP TABLE x", "1trip", "pg_trip", ""])
async def test_schema_names_that_are_not_plain_identifiers_are_refused(
    infra: InfraUrls, schema: str
) -> None:
    with pytest.raises(InvalidSchemaName):
        await create_pool(infra.postgres_dsn, schema=schema)
