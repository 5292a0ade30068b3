"""The per-user socket cap across every edge process (the workers of one edge, and edge copies
sharing one Valkey): a user's newest ``ws_max_per_user`` sockets stay open, an older one is
closed with 4409 (replaced).

Each user's open sockets are a sorted set in Valkey, ``edge:ws:user:<id>``: member
``<process id>:<n>``, score the time it opened. Opening one adds it and, in the same script,
takes out the oldest beyond the cap and returns them. A socket of this process is closed at
once; one of another process is put in that process's mailbox, ``edge:ws:close:<process
id>``, a list each process empties every ``POLL_S``, so it closes within about that long. A
closed socket leaves the set. The process id is new with each start, so a set may keep the
members of a process that was killed; they are the oldest, so the next opens take them out
(closing nothing) and they never keep a user from connecting: the cap only ever closes the
oldest, it refuses no one. Keys expire a day after the user's last open.

Without Valkey (an outage) each process keeps its own count (edge/ws.py, ``_make_room``):
the cap then holds per process, as it did before the processes shared it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from redis.exceptions import RedisError

from edge import wire
from edge.metrics import WS_POLICY_CLOSES
from edge.wsconn import Connection
from rideshare.redis_client import RedisClient

__all__ = ["UserSockets"]

logger = logging.getLogger(__name__)

USER_KEY = "edge:ws:user:"
MAILBOX_KEY = "edge:ws:close:"
KEY_TTL_S = 24 * 3600
MAILBOX_TTL_S = 60
POLL_S = 0.5
CALL_TIMEOUT_S = 1.0

# KEYS[1] the user's set; ARGV: score, member, cap, ttl. Returns the members taken out.
_ADMIT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over <= 0 then return {} end
local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
redis.call('ZREM', KEYS[1], unpack(old))
return old
"""


class UserSockets:
    """This process's side of the shared cap."""

    def __init__(self, redis: RedisClient, *, max_per_user: int) -> None:
        self._redis = redis
        self._max = max_per_user
        self.process_id = uuid.uuid4().hex[:12]
        self._admit = redis.register_script(_ADMIT)
        self._seq = 0
        self._members: dict[Connection, str] = {}
        self._conns: dict[str, Connection] = {}

    async def admit(self, conn: Connection) -> None:
        """Count ``conn`` in its user's set and close whatever that pushes over the cap."""
        self._seq += 1
        member = f"{self.process_id}:{self._seq}"
        self._members[conn] = member
        self._conns[member] = conn
        sub = conn.principal.sub
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                evicted = await self._admit(
                    keys=[USER_KEY + sub],
                    args=[time.time_ns() // 1000, member, self._max, KEY_TTL_S],
                )
                remote: dict[str, list[str]] = {}
                for raw in evicted:
                    old = raw.decode() if isinstance(raw, bytes) else str(raw)
                    owner = old.rsplit(":", 1)[0]
                    if owner == self.process_id:
                        self._close(old)
                    else:
                        remote.setdefault(owner, []).append(old)
                if remote:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for owner, members in remote.items():
                            pipe.rpush(MAILBOX_KEY + owner, *members)
                            pipe.expire(MAILBOX_KEY + owner, MAILBOX_TTL_S)
                        await pipe.execute()
        except (RedisError, TimeoutError) as exc:
            logger.warning("socket cap of %s counted on this process only: %r", sub, exc)

    async def release(self, conn: Connection) -> None:
        member = self._members.pop(conn, None)
        if member is None:
            return
        self._conns.pop(member, None)
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._redis.zrem(USER_KEY + conn.principal.sub, member)

    async def run(self, stop: asyncio.Event) -> None:
        """Close the sockets other processes took out, until ``stop``."""
        mailbox = MAILBOX_KEY + self.process_id
        while not stop.is_set():
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    members = await self._redis.lpop(mailbox, 1000)
            except (RedisError, TimeoutError) as exc:
                logger.debug("socket cap mailbox not read: %r", exc)
                members = None
            for raw in members or ():
                self._close(raw.decode() if isinstance(raw, bytes) else str(raw))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await stop.wait()

    def _close(self, member: str) -> None:
        conn = self._conns.get(member)
        if conn is not None and not conn.closed:
            WS_POLICY_CLOSES.labels("replaced").inc()
            conn.close(wire.CLOSE_REPLACED, "replaced by a newer socket of the same user")
