"""A copy holding a leader lease as a process of its own, for tests that kill it.

``python -m tests.integration.leader_copy <dsn> <schema> <lease name>`` runs a
:class:`rideshare.leader.LeaderLease` whose worker prints ``leading`` when its term starts.
"""

from __future__ import annotations

import asyncio
import sys

from rideshare.db import create_pool
from rideshare.leader import LeaderLease


async def main(dsn: str, schema: str, name: str) -> None:
    pool = await create_pool(dsn, schema=schema, max_size=2)

    async def worker(resign: asyncio.Event) -> None:
        print("leading", flush=True)
        await resign.wait()

    print("ready", flush=True)
    await LeaderLease(pool, name, retry_s=0.5, check_s=0.5).run(worker, asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
