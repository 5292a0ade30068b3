"""A PostgreSQL hot standby that streams from the primary, and failover to it.

The standby is a copy made with ``pg_basebackup -R`` (which writes ``standby.signal`` and the
primary's address into the copy), started on a port of its own; it replays the primary's WAL
as it is written and answers reads meanwhile. Its ``cluster_name`` (:data:`STANDBY_NAME`) is
the name it reports to the primary, the name ``synchronous_standby_names`` refers to.

Synchronous or not (:func:`set_synchronous`): with a synchronous standby a commit returns
only once the standby has the commit's WAL, so a primary lost the next moment loses nothing
that was acknowledged; the price is a round trip to the standby on every commit, and commits
wait while the standby is away. Asynchronous, a commit is not held, and the last
fraction of a second of commits may be lost with the primary.

Failover (:func:`promote`) turns the standby into a primary (``pg_promote()``). Clients
find it by themselves when their DSN names both hosts with ``target_session_attrs=read-write``
(:func:`failover_dsn`): asyncpg tries the hosts in order and keeps the first that takes
writes, so a pool's next connection after the promotion lands on the new primary. The old
primary must be stopped first and never started again as it was (its WAL has forked from the
new primary's; it comes back only as a new standby, made by ``pg_basebackup`` or
``pg_rewind``): two servers that both take writes would each get some of them.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

__all__ = [
    "STANDBY_NAME",
    "StandbyError",
    "base_backup",
    "failover_dsn",
    "host_dsns",
    "promote",
    "role",
    "set_synchronous",
    "wait_streaming",
]

STANDBY_NAME = "standby"
TARGET_ATTRS = "target_session_attrs"


class StandbyError(RuntimeError):
    """A standby could not be made, found or promoted."""


def host_dsns(dsn: str) -> list[str]:
    """Each host of a DSN that may name several (``user:pw@h1:p1,h2:p2/db``) as a DSN of its
    own, without ``target_session_attrs`` (so it reaches that host whatever its role)."""
    parts = urlsplit(dsn)
    login, at, hosts = parts.netloc.rpartition("@")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != TARGET_ATTRS])
    return [
        urlunsplit(parts._replace(netloc=f"{login}{at}{host}", query=query))
        for host in hosts.split(",")
    ]


def failover_dsn(dsns: Sequence[str]) -> str:
    """One DSN naming the host of each of ``dsns`` (same login and database), that connects
    to whichever takes writes."""
    first = urlsplit(dsns[0])
    login, at, _ = first.netloc.rpartition("@")
    hosts = ",".join(urlsplit(dsn).netloc.rpartition("@")[2] for dsn in dsns)
    query = urlencode([*parse_qsl(first.query), (TARGET_ATTRS, "read-write")])
    return urlunsplit(first._replace(netloc=f"{login}{at}{hosts}", query=query))


async def role(dsn: str, *, timeout_s: float = 3.0) -> str:
    """``primary`` or ``standby``: what the one server of ``dsn`` is now."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()", timeout=timeout_s)
    finally:
        await conn.close(timeout=timeout_s)
    return "standby" if in_recovery else "primary"


async def promote(dsn: str, *, timeout_s: float = 60.0) -> None:
    """Make the standby of ``dsn`` a primary, returning once it takes writes."""
    conn = await asyncpg.connect(dsn, timeout=min(timeout_s, 10.0))
    try:
        if not await conn.fetchval("SELECT pg_is_in_recovery()", timeout=timeout_s):
            raise StandbyError("the server is already a primary")
        promoted = await conn.fetchval(
            "SELECT pg_promote(true, $1)", int(timeout_s), timeout=timeout_s + 5
        )
    finally:
        await conn.close(timeout=5.0)
    if not promoted:
        raise StandbyError(f"the standby was not promoted within {timeout_s:.0f}s")


async def set_synchronous(primary_dsn: str, *, synchronous: bool, timeout_s: float = 10.0) -> None:
    """Make the primary wait for :data:`STANDBY_NAME` on every commit, or stop waiting.

    Kept in the primary's ``postgresql.auto.conf`` (ALTER SYSTEM), so it outlives a restart;
    a standby copied later must not inherit it (it would wait for itself once promoted), so
    this runs after the copy is made.
    """
    names = STANDBY_NAME if synchronous else ""
    conn = await asyncpg.connect(primary_dsn, timeout=timeout_s)
    try:
        # A literal, not a parameter (ALTER SYSTEM takes none); ``names`` is one of two
        # constants.
        await conn.execute(
            f"ALTER SYSTEM SET synchronous_standby_names = '{names}'", timeout=timeout_s
        )
        await conn.execute("SELECT pg_reload_conf()", timeout=timeout_s)
    finally:
        await conn.close(timeout=timeout_s)


async def wait_streaming(primary_dsn: str, *, timeout_s: float = 60.0) -> None:
    """Return once the primary sees :data:`STANDBY_NAME` streaming from it."""
    conn = await asyncpg.connect(primary_dsn, timeout=min(timeout_s, 10.0))
    try:
        async with asyncio.timeout(timeout_s):
            while not await conn.fetchval(  # noqa: ASYNC110 - another process
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE application_name = $1 AND state = 'streaming'",
                STANDBY_NAME,
            ):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise StandbyError(f"no standby streams from the primary after {timeout_s:.0f}s") from None
    finally:
        await conn.close(timeout=5.0)


async def base_backup(
    bin_dir: Path,
    *,
    port: int,
    user: str,
    password: str,
    pgdata: Path,
    data_arg: str,
    run_as: str | None,
    timeout_s: float = 300.0,
) -> None:
    """Copy the primary on 127.0.0.1:``port`` into the empty ``pgdata`` as a standby of it.

    Run as ``run_as`` (the server's own user) with ``pgdata`` as its working directory and
    ``data_arg`` as the directory it is told, as the server itself is started (see
    rideshare.infra.EmbeddedInfra._start_postgres).
    """
    argv = [
        str(bin_dir / "pg_basebackup"),
        "-D", data_arg,
        "-h", "127.0.0.1",
        "-p", str(port),
        "-U", user,
        "-R",  # standby.signal and primary_conninfo in the copy
        "-X", "stream",  # the WAL written during the copy comes with it
        "-c", "fast",  # an immediate checkpoint, not a spread one
        "--no-sync",
    ]  # fmt: skip
    # The password in the environment, not on the command line that everyone can read.
    env = {**os.environ, "PGPASSWORD": password}
    group = pwd.getpwnam(run_as).pw_gid if run_as else None
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            argv,
            capture_output=True,
            cwd=pgdata,
            env=env,
            user=run_as,
            group=group,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StandbyError(f"pg_basebackup did not finish within {timeout_s:.0f}s") from None
    if result.returncode != 0:
        raise StandbyError(
            f"pg_basebackup failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
        )
