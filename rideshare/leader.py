"""Leader by lease: a background worker that one copy of a service runs at a time.

Most background work is safe in every copy: rows are claimed with ``FOR UPDATE SKIP LOCKED``
and a lease (notification deliveries, payments, dispatch claims), writes are version-checked,
the outbox relay takes a lock per batch. Work that every copy would repeat for nothing (a
sweep that scans every live trip and asks another service about each) runs under a
:class:`LeaderLease` instead, in one copy, and another takes it over when that one dies.

The lease is a PostgreSQL session advisory lock (``pg_try_advisory_lock``) on a pooled
connection that the leader keeps for as long as it leads. PostgreSQL ends the lock with the
session: a leader killed with ``kill -9`` (its socket closes and the server sees it at once),
its connection closed or terminated, the server restarted or failed over to a standby (the
new primary has no locks). The other copies try for the lock every ``retry_s``, so one takes
over within about that long.

The leader checks its session every ``check_s`` (``SELECT 1`` with a deadline) and, when it
fails, stops the worker (sets the stop event it was given) and drops the connection before it
tries again. A leader cut off from the server without its socket closing (a partition) keeps
the lock on the server until TCP keepalives end the session (set per session below: about
2 + 3 x 2 s), while it stops its own worker within ``check_s``: for a few seconds
two copies may both run the worker. Hence only work that is already safe twice runs under a
lease: the lease saves work, correctness never rests on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_errors import log_round_failure

__all__ = ["LeaderLease"]

logger = logging.getLogger(__name__)

Worker = Callable[[asyncio.Event], Awaitable[object]]

# The server notices a vanished leader (no FIN, no RST) after idle + interval x count seconds.
_KEEPALIVES = (
    ("tcp_keepalives_idle", 2),
    ("tcp_keepalives_interval", 2),
    ("tcp_keepalives_count", 3),
)


class LeaderLease:
    """Runs a worker only while this copy holds the lease ``name`` (one per service and job).

    ``leading`` says whether it does now; ``terms`` counts the times it became leader.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        *,
        retry_s: float = 1.0,
        check_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        if min(retry_s, check_s, timeout_s) <= 0:
            raise ValueError("retry_s, check_s and timeout_s must be positive")
        self._pool = pool
        self.name = name
        self._key = f"rideshare.leader:{name}"
        self.retry_s = retry_s
        self.check_s = check_s
        self.timeout_s = timeout_s
        self.leading = False
        self.terms = 0
        self.backend_pid: int | None = None  # the session that holds the lock, while leading

    async def run(self, worker: Worker, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: take the lease when it is free, run ``worker(resign)`` while
        it is held, and stop the worker (``resign`` set) when the lease is lost or ``stop``
        is set. ``worker`` must return soon after its event is set."""
        while not stop.is_set():
            try:
                await self._term(worker, stop)
            except Exception as exc:
                reraise_if_cancelling()
                log_round_failure(logger, f"leader lease {self.name}", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_s):
                    await stop.wait()

    async def _term(self, worker: Worker, stop: asyncio.Event) -> None:
        """One try for the lease and, if it is won, one term as leader."""
        async with self._pool.acquire(timeout=self.timeout_s) as conn:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                self._key,
                timeout=self.timeout_s,
            )
            if not got:
                return
            for setting, value in _KEEPALIVES:
                await conn.execute(f"SET {setting} = {value}", timeout=self.timeout_s)
            resign = asyncio.Event()

            def lost(_: object) -> None:
                resign.set()  # the session is gone, and the lock with it: stop at once

            conn.add_termination_listener(lost)
            self.leading = True
            self.terms += 1
            self.backend_pid = conn.get_server_pid()
            logger.info("leading %s", self.name)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._lead(worker, resign))
                    group.create_task(self._hold(conn, stop, resign))
            finally:
                self.leading = False
                self.backend_pid = None
                if not _closed(conn):
                    conn.remove_termination_listener(lost)
            if _closed(conn):
                logger.warning("lost the lead of %s: its connection closed", self.name)
                return
            # Released by the pool's reset too; said here so the next leader need not wait.
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                self._key,
                timeout=self.timeout_s,
            )
            logger.info("resigned the lead of %s", self.name)

    @staticmethod
    async def _lead(worker: Worker, resign: asyncio.Event) -> None:
        try:
            await worker(resign)
        finally:
            resign.set()  # a worker that ended by itself ends the term

    async def _hold(
        self, conn: asyncpg.Connection, stop: asyncio.Event, resign: asyncio.Event
    ) -> None:
        """Check the session until the term ends; a failed check ends it and the session."""
        while not resign.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_s):
                    await _first(stop, resign)
            if stop.is_set() or resign.is_set() or _closed(conn):
                resign.set()
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self.timeout_s)
            except Exception as exc:
                reraise_if_cancelling()
                logger.warning("lost the lead of %s: %r", self.name, exc)
                resign.set()
                with contextlib.suppress(asyncpg.InterfaceError):  # already detached
                    conn.terminate()  # the server ends the session, and the lock with it
                return


def _closed(conn: asyncpg.Connection) -> bool:
    """Whether the connection is gone: a pooled one that closed is also detached from its
    proxy, which then refuses every call, this one included."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
