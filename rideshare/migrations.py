"""A small forward-only migration runner: ordered SQL files, each applied once per schema.

A service keeps ``NNNN_name.sql`` files in its ``migrations/`` directory. Before them, the
shared files in ``rideshare/sql/`` (the outbox and processed-events tables every service needs)
are applied into the same schema, recorded as ``shared/NNNN``, so no service copies that DDL.
Each file runs in its own transaction together with its row in ``schema_migrations``; a
session advisory lock keyed by the schema makes concurrent starts of several copies safe.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from rideshare.db import ensure_schema, quote_schema

__all__ = [
    "SHARED_DIRECTORY",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "discover_migrations",
]

logger = logging.getLogger(__name__)

SHARED_DIRECTORY = Path(__file__).parent / "sql"
SHARED_PREFIX = "shared/"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """A migration directory is malformed, or an applied file has been changed."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``version`` is its key in ``schema_migrations`` (``0001``, ``shared/0000``)."""

    version: str
    name: str
    sql: str
    checksum: str


def discover_migrations(directory: Path, *, prefix: str = "") -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory`` in version order."""
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} does not exist")
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lowercase_name.sql")
        version = prefix + match.group(1)
        if version in found:
            raise MigrationError(f"{path}: version {version} also used by {found[version].name}")
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=prefix + path.name,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    pool: asyncpg.Pool,
    *,
    schema: str,
    directory: Path | None,
    lock_timeout_s: float = 60.0,
    statement_timeout_s: float = 300.0,
) -> list[str]:
    """Apply the shared migrations, then those in ``directory``, that ``schema`` lacks.

    Returns the names of the files applied by this call (``shared/0000_outbox.sql``,
    ``0001_init.sql``, ...); an empty list when the schema was up to date. Raises
    :class:`MigrationError` when an applied file's checksum changed, before applying anything.
    """
    quoted = quote_schema(schema)
    migrations = discover_migrations(SHARED_DIRECTORY, prefix=SHARED_PREFIX)
    if directory is not None:
        migrations += discover_migrations(directory)
    lock_key = f"rideshare.migrations:{schema}"
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await ensure_schema(conn, schema)
        # A session lock (not a transaction lock) because each file has its own transaction;
        # a second copy starting at once waits here, then finds everything applied.
        await conn.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key, timeout=lock_timeout_s
        )
        try:
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                    version    text PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    checksum   text NOT NULL
                )"""
            )
            rows = await conn.fetch(
                f"SELECT version, name, checksum FROM {quoted}.schema_migrations"
            )
            applied = {row["version"]: row for row in rows}
            for migration in migrations:
                row = applied.get(migration.version)
                if row is not None and row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} was changed after it was applied to schema {schema!r} "
                        f"(checksum {row['checksum'][:12]} recorded, {migration.checksum[:12]} "
                        "now); migrations are forward-only: add a new file instead"
                    )
            known = {m.version for m in migrations}
            for version in sorted(set(applied) - known):
                logger.warning(
                    "schema %s has migration %s (%s) that no file provides",
                    schema,
                    version,
                    applied[version]["name"],
                )
            for migration in migrations:
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
                    await conn.execute(migration.sql, timeout=statement_timeout_s)
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                logger.info("applied migration %s to schema %s", migration.name, schema)
                applied_now.append(migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)
    return applied_now
