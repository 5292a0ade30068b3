"""The transactional outbox: events are rows written with the state change, then relayed.

A service calls :func:`add_event` inside the transaction that changes its data, so the event
exists if and only if the change committed. :class:`OutboxRelay` publishes unsent rows to
JetStream with ``Nats-Msg-Id: <event_id>``, waits for the stream's acks and marks the rows
sent. A relay that dies between publishing and marking republishes on restart; JetStream
drops those duplicates inside its duplicate window, and consumers dedupe by event id anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck

from protos.events import MSG_ID_HEADER
from rideshare.bus import Envelope, encode_envelope, reraise_if_cancelling
from rideshare.db import quote_schema
from rideshare.grpc_errors import outage_of
from rideshare.lifecycle import wait_any

__all__ = ["OutboxRelay", "add_event", "notify_channel"]

logger = logging.getLogger(__name__)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes the relay of ``schema``."""
    quote_schema(schema)
    return f"{schema}_outbox"


async def add_event(
    conn: asyncpg.Connection,
    *,
    subject: str,
    aggregate_id: str,
    aggregate_version: int,
    payload: Message,
) -> str:
    """Queue an event in the outbox of the connection's schema; returns its event id.

    Must run inside the caller's transaction, together with the change the event reports.
    The row lands in the ``outbox`` first on ``search_path`` (the service's schema, see
    db.create_pool); ``occurred_at`` is the transaction's time. The relay is woken by a
    NOTIFY, which Postgres delivers only when (and if) the transaction commits.
    """
    (event_id,) = await add_events(conn, [(subject, aggregate_id, aggregate_version, payload)])
    return event_id


OutboxEvent = tuple[str, str, int, Message]
"""An event to queue: (subject, aggregate id, aggregate version, payload)."""


async def add_events(conn: asyncpg.Connection, events: Sequence[OutboxEvent]) -> list[str]:
    """:func:`add_event` for several events at once (one pipelined insert, one NOTIFY): what
    a change of many aggregates in one transaction queues. Returns their event ids."""
    if not conn.is_in_transaction():
        raise RuntimeError("add_event must run inside the transaction of the state change")
    rows = [
        (uuid.uuid4().hex, subject, aggregate_id, version, payload.SerializeToString())
        for subject, aggregate_id, version, payload in events
    ]
    if not rows:
        return []
    await conn.executemany(
        "INSERT INTO outbox (event_id, subject, aggregate_id, aggregate_version, payload) "
        "VALUES ($1, $2, $3, $4, $5)",
        rows,
    )
    await conn.execute("SELECT pg_notify(current_schema() || '_outbox', '')")
    return [row[0] for row in rows]


class OutboxRelay:
    """Publishes the outbox of one schema to JetStream; run one or more per service.

    Woken by NOTIFY on :func:`notify_channel`, with a poll every ``poll_interval_s`` as a
    fallback (missed notifications, a lost listener connection). Sent rows are deleted once
    older than ``retention_s``, checked every ``prune_interval_s``.

    Ordering. Rows are published in id order, and writes to one aggregate are serialised by
    its row lock (version check), so id order is version order per aggregate. Only one relay
    per schema publishes at a time (a transaction advisory lock; the others stand by and take
    over at once if it dies), so batches of several relays never interleave; SKIP LOCKED on
    the claim keeps that safe even without the lock. Within a batch the sends go out in order
    on one connection and only the acks are awaited concurrently, which is where the
    throughput comes from. The tradeoff: if one publish of a batch fails and a later one
    succeeds, the failed event is retried after the later one and reaches consumers out of
    order, so consumers compare ``aggregate_version`` rather than trust arrival order.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        schema: str,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
        retention_s: float = 600.0,
        prune_interval_s: float = 60.0,
        error_backoff_s: float = 1.0,
        max_error_backoff_s: float = 5.0,
    ) -> None:
        self._quoted = quote_schema(schema)
        self._pool = pool
        self._js = js
        self.schema = schema
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.publish_timeout_s = publish_timeout_s
        self.retention_s = retention_s
        self.prune_interval_s = prune_interval_s
        self.error_backoff_s = error_backoff_s
        self.max_error_backoff_s = max_error_backoff_s
        self.published = 0
        self.duplicates = 0  # acks saying JetStream already had the event (a republish)
        self.failed_rounds = 0  # batches that failed (a server down), since start
        self._wake = asyncio.Event()
        self._rounds_started = 0
        self._round_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._lock_key = f"rideshare.outbox:{schema}"
        self._next_prune = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; the batch in flight is finished (or rolled back).

        Never ends because a server went away: a lost LISTEN connection is replaced on the
        next round (polling meanwhile), and a failed batch (PostgreSQL or NATS down) is
        logged and retried after a backoff that doubles up to ``max_error_backoff_s``. Rows
        stay unsent until JetStream acks them, so nothing is lost; a batch published but
        not marked sent is published again and deduplicated by its ``Nats-Msg-Id``.
        """
        listener: Any = None
        failures = 0
        try:
            while not stop.is_set():
                # nats-py swallows a cancellation that lands inside some of its awaits
                # (publish flushing); honour it at the loop boundary at the latest.
                reraise_if_cancelling()
                if listener is None or not _usable(listener):
                    listener = await self._listen(listener, quiet=failures > 0)
                # Cleared before the batch, so a NOTIFY that arrives while it runs is kept
                # and the next wait returns at once.
                self._wake.clear()
                self._rounds_started += 1
                try:
                    sent = await self.relay_once()
                    await self._maybe_prune()
                except Exception as exc:
                    reraise_if_cancelling()
                    failures += 1
                    self.failed_rounds += 1
                    delay = min(
                        self.error_backoff_s * 2 ** (failures - 1), self.max_error_backoff_s
                    )
                    self._log_failure(exc, failures, delay)
                    self._round_ended()
                    await wait_any(stop, None, delay)
                    continue
                self._round_ended()
                if failures:
                    logger.info(
                        "outbox relay %s: publishing again after %d failed rounds",
                        self.schema,
                        failures,
                    )
                    failures = 0
                if sent >= self.batch_size:
                    continue  # more are probably waiting
                await wait_any(stop, self._wake, self.poll_interval_s)
        finally:
            if listener is not None:
                await self._unlisten(listener)

    async def flushed(self) -> None:
        """Return once a round that began after this call has ended: what was committed
        before the call is then published, unless that round failed or its batch was full.
        Wakes the relay for that round. Waits forever on a relay that is not running: give
        it a deadline."""
        waiter = (self._rounds_started + 1, asyncio.get_running_loop().create_future())
        self._round_waiters.append(waiter)
        self._wake.set()
        try:
            await waiter[1]
        finally:
            if waiter in self._round_waiters:
                self._round_waiters.remove(waiter)

    def _round_ended(self) -> None:
        ended = self._rounds_started
        waiting = []
        for round_no, future in self._round_waiters:
            if round_no <= ended:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((round_no, future))
        self._round_waiters = waiting

    def _log_failure(self, exc: Exception, failures: int, delay: float) -> None:
        server = outage_of(exc)
        if server is None:
            logger.error(
                "outbox relay %s: batch failed, retry in %.1fs",
                self.schema,
                delay,
                exc_info=exc,
            )
        elif failures == 1 or delay >= self.max_error_backoff_s:
            # One line per round at most, and no traceback: an outage is not a bug.
            logger.warning(
                "outbox relay %s: %s unavailable (%r), retry in %.1fs",
                self.schema,
                server,
                exc,
                delay,
            )

    async def relay_once(self) -> int:
        """Claim and publish one batch of unsent rows; returns how many were marked sent.

        Returns 0 without publishing when another relay of the schema is busy.
        """
        q = self._quoted
        async with self._pool.acquire(timeout=self.publish_timeout_s) as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", self._lock_key
            ):
                return 0
            rows = await conn.fetch(
                "SELECT id, event_id, subject, aggregate_id, aggregate_version, payload, "
                f"occurred_at FROM {q}.outbox WHERE sent_at IS NULL "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            sent_ids = await self._publish(rows)
            if sent_ids:
                await conn.execute(
                    f"UPDATE {q}.outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                    sent_ids,
                )
        self.published += len(sent_ids)
        if len(sent_ids) < len(rows):
            raise RuntimeError(
                f"{len(rows) - len(sent_ids)} of {len(rows)} events were not acked by JetStream"
            )
        return len(sent_ids)

    async def _publish(self, rows: list[Any]) -> list[int]:
        """Publish rows in order, await their acks together; the ids JetStream acked."""
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for row in rows:
                envelope = Envelope(
                    event_id=row["event_id"],
                    occurred_at=row["occurred_at"],
                    aggregate_id=row["aggregate_id"],
                    aggregate_version=row["aggregate_version"],
                    type=row["subject"],
                    payload=bytes(row["payload"]),
                )
                reraise_if_cancelling()  # see run(): nats-py may have swallowed it
                futures.append(
                    await self._js.publish_async(
                        row["subject"],
                        encode_envelope(envelope),
                        wait_stall=self.publish_timeout_s,
                        headers={MSG_ID_HEADER: row["event_id"]},
                    )
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.publish_timeout_s):
                    await asyncio.wait(futures)
        finally:
            # Unanswered publishes are given up (and release the client's pending slots);
            # their rows stay unsent and are published again, deduped by msg id.
            for future in futures:
                future.cancel()
        sent: list[int] = []
        for row, future in zip(rows, futures, strict=False):
            if future.cancelled():
                continue
            exc = future.exception()
            if exc is not None:
                logger.warning(
                    "outbox relay %s: publish of %s to %s failed: %r",
                    self.schema,
                    row["event_id"],
                    row["subject"],
                    exc,
                )
                continue
            if future.result().duplicate:
                self.duplicates += 1
            sent.append(row["id"])
        return sent

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self.prune_interval_s
        deleted = await self._pool.execute(
            f"DELETE FROM {self._quoted}.outbox WHERE sent_at < now() - make_interval(secs => $1)",
            self.retention_s,
        )
        logger.debug("outbox relay %s: pruned (%s)", self.schema, deleted)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self, old: Any, *, quiet: bool = False) -> Any:
        """A dedicated pool connection LISTENing on the schema's channel, or None on failure
        (the relay polls meanwhile and tries again next round). ``quiet``: PostgreSQL is
        known to be down, so a failure here is not news."""
        if old is not None:
            await self._unlisten(old)
        try:
            conn = await self._pool.acquire(timeout=self.publish_timeout_s)
        except Exception as exc:
            reraise_if_cancelling()
            if not quiet:
                logger.warning(
                    "outbox relay %s: no listener connection, polling: %r", self.schema, exc
                )
            return None
        try:
            await conn.add_listener(notify_channel(self.schema), self._on_notify)
        except BaseException as exc:
            await _release_quietly(self._pool, conn)
            if not isinstance(exc, Exception):
                raise
            reraise_if_cancelling()
            if not quiet:
                logger.warning("outbox relay %s: LISTEN failed, polling: %r", self.schema, exc)
            return None
        return conn

    async def _unlisten(self, conn: Any) -> None:
        try:
            if _usable(conn):
                await conn.remove_listener(notify_channel(self.schema), self._on_notify)
        except Exception as exc:
            reraise_if_cancelling()
            logger.info("outbox relay %s: UNLISTEN failed: %r", self.schema, exc)
        finally:
            await _release_quietly(self._pool, conn)


def _usable(conn: Any) -> bool:
    """Whether a pool connection still works. When its server connection is lost, asyncpg
    hands it back to the pool by itself and every method of the proxy we hold then raises
    InterfaceError ("released back to the pool"), ``is_closed()`` included."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _release_quietly(pool: asyncpg.Pool, conn: Any) -> None:
    """Give ``conn`` back to the pool; a lost connection is already back (a no-op), and a
    failure to reset a broken one only costs that connection."""
    try:
        await pool.release(conn)
    except Exception as exc:
        reraise_if_cancelling()
        logger.info("outbox: releasing a listener connection failed: %r", exc)
