"""PostgreSQL pool: one schema per service, a deadline on every query.

Each service owns one schema in a shared database. The pool creates it when missing and puts
it first on every connection's ``search_path``, so service SQL names its tables unqualified.
"""

from __future__ import annotations

import re

import asyncpg
import grpc

from rideshare.grpc_errors import StatusTable

__all__ = [
    "DATA_ERRORS",
    "SCHEMA_RE",
    "InvalidSchemaName",
    "create_pool",
    "ensure_schema",
    "ping",
    "quote_schema",
]

# For a service's error table: SQLSTATE class 22, "data exception", is a value the database
# cannot hold (a NUL in text, a number out of range) that no validator caught. It is the
# caller's input, so INVALID_ARGUMENT, with the database's own words.
DATA_ERRORS: StatusTable = {asyncpg.DataError: grpc.StatusCode.INVALID_ARGUMENT}

# Schema names are interpolated into SQL (identifiers cannot be bind parameters), so only
# plain lowercase identifiers are accepted; no quoting tricks, no case folding surprises.
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class InvalidSchemaName(ValueError):
    """A schema name is not a plain lowercase identifier."""


def quote_schema(schema: str) -> str:
    """``schema`` as a quoted SQL identifier, after checking it against :data:`SCHEMA_RE`."""
    if not SCHEMA_RE.fullmatch(schema) or schema.startswith("pg_"):
        raise InvalidSchemaName(
            f"invalid schema name {schema!r}: use lowercase letters, digits and '_' "
            "(at most 63, not starting with a digit or 'pg_')"
        )
    return f'"{schema}"'


async def create_pool(
    dsn: str,
    *,
    schema: str,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 5.0,
    connect_timeout: float = 5.0,
) -> asyncpg.Pool:
    """A pool whose connections use ``search_path = <schema>, public``; creates the schema.

    ``command_timeout`` is the default deadline (seconds) of every query on the pool, and
    ``connect_timeout`` that of opening a connection (asyncpg's default is a minute, which a
    caller would wait out while PostgreSQL is unreachable). A connection lost to a restart
    of the server is replaced by the pool on its next use.
    """
    quoted = quote_schema(schema)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        server_settings={"search_path": f"{quoted}, public"},
    )
    try:
        async with pool.acquire() as conn, conn.transaction():
            # CREATE SCHEMA IF NOT EXISTS races with itself (unique violation on
            # pg_namespace) when two copies start at once; the lock serialises them.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"rideshare.schema:{schema}",
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
    except BaseException:
        await pool.close()
        raise
    return pool


async def ensure_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Create ``schema`` if it does not exist; safe when several processes do it at once."""
    quoted = quote_schema(schema)
    async with conn.transaction():
        # CREATE SCHEMA IF NOT EXISTS races with itself (a unique violation on pg_namespace)
        # when two copies start at once; a transaction-level lock keyed by name serialises them.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"rideshare.schema:{schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")


async def ping(pool: asyncpg.Pool, *, timeout_s: float = 2.0) -> None:
    """Raise unless the database answers ``SELECT 1`` within ``timeout_s`` seconds."""
    await pool.fetchval("SELECT 1", timeout=timeout_s)
