"""The leader lease (rideshare/leader.py) over a real PostgreSQL: one copy leads at a time,
and another takes over within seconds when the leader stops, is killed (SIGKILL, a process
of its own) or loses its connection."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from rideshare.leader import LeaderLease
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.plumbing import schema_pool

TAKEOVER_S = 30.0  # generous: the lease itself takes about retry_s (0.5 s)


@pytest.fixture
async def pool(infra: InfraUrls, unique_name: str) -> AsyncIterator[asyncpg.Pool]:
    async with schema_pool(infra.postgres_dsn, unique_name) as pool:
        yield pool


@dataclass
class Board:
    """Which copies' workers run now, and how often one started while another ran."""

    working: set[str] = field(default_factory=set)
    overlaps: int = 0


class Copy:
    """A copy in this process: a lease, and a worker that marks itself on the board."""

    def __init__(self, pool: asyncpg.Pool, name: str, label: str, board: Board) -> None:
        self.label = label
        self.board = board
        self.lease = LeaderLease(pool, name, retry_s=0.5, check_s=0.5)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.lease.run(self.worker, self.stop))

    async def worker(self, resign: asyncio.Event) -> None:
        if self.board.working:
            self.board.overlaps += 1
        self.board.working.add(self.label)
        try:
            await resign.wait()
        finally:
            self.board.working.discard(self.label)

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(20):
            await asyncio.wait([self.task])


@pytest.fixture
async def copies(pool: asyncpg.Pool, unique_name: str) -> AsyncIterator[list[Copy]]:
    board = Board()
    started = [Copy(pool, unique_name, label, board) for label in ("a", "b", "c")]
    try:
        yield started
    finally:
        for copy in started:
            await copy.close()


async def test_one_copy_leads_and_another_takes_over_when_it_stops(copies: list[Copy]) -> None:
    await eventually(lambda: len(copies[0].board.working) == 1, timeout_s=TAKEOVER_S)
    [first] = [c for c in copies if c.lease.leading]
    stopped_at = time.monotonic()
    await first.close()
    await eventually(
        lambda: any(c.lease.leading for c in copies if c is not first), timeout_s=TAKEOVER_S
    )
    print(f"\ntaken over {time.monotonic() - stopped_at:.2f}s after the leader stopped")
    assert len(copies[0].board.working) == 1
    assert copies[0].board.overlaps == 0


async def test_a_leader_whose_session_is_terminated_stops_and_the_lease_goes_on(
    copies: list[Copy], pool: asyncpg.Pool
) -> None:
    await eventually(lambda: len(copies[0].board.working) == 1, timeout_s=TAKEOVER_S)
    [leader] = [c for c in copies if c.lease.leading]
    assert leader.lease.backend_pid is not None
    terms = sum(c.lease.terms for c in copies)
    async with asyncio.timeout(10):
        await pool.execute("SELECT pg_terminate_backend($1)", leader.lease.backend_pid)
    # The leader sees its session end at once (the connection's termination) and stops.
    await eventually(lambda: not leader.lease.leading or leader.lease.terms > 1, TAKEOVER_S)
    await eventually(lambda: sum(c.lease.terms for c in copies) > terms, timeout_s=TAKEOVER_S)
    await eventually(lambda: len(copies[0].board.working) == 1, timeout_s=TAKEOVER_S)


async def test_a_leader_killed_with_sigkill_is_replaced_within_seconds(
    infra: InfraUrls, unique_name: str, pool: asyncpg.Pool
) -> None:
    name = f"{unique_name}_killed"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.leader_copy",
        infra.postgres_dsn,
        unique_name,
        name,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    here: Copy | None = None
    try:
        async with asyncio.timeout(60):
            assert (await child.stdout.readline()).strip() == b"ready"
            assert (await child.stdout.readline()).strip() == b"leading"
        here = Copy(pool, name, "here", Board())
        # Absence takes a wait to show: the copy here keeps trying, and does not lead.
        await asyncio.sleep(2.0)
        assert not here.lease.leading

        child.kill()
        killed_at = time.monotonic()
        async with asyncio.timeout(30):
            await child.wait()
        await eventually(lambda: here.lease.leading, timeout_s=TAKEOVER_S)
        print(f"\ntaken over {time.monotonic() - killed_at:.2f}s after kill -9 of the leader")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        if here is not None:
            await here.close()
