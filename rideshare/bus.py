"""The NATS bus: connection, the JetStream stream, event envelopes and durable consumers.

Events travel on JetStream wrapped in ``rideshare.common.v1.EventEnvelope`` with header
``Nats-Msg-Id: <event_id>`` (producers go through the outbox, see outbox.py). Consumers are
durable pull consumers with explicit acks; several copies with one durable name share the
work. Delivery is at-least-once, so handlers make their effect idempotent with
:func:`claim_event` in the same database transaction as the effect.

Live data (positions, per-user pushes) uses core NATS directly: ``nc.publish`` and
``nc.subscribe`` are already one-liners and are not wrapped here.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from protos.common.v1 import common_pb2
from protos.events import MSG_ID_HEADER, STREAM, STREAM_SUBJECTS
from rideshare.infra_users import inbox_prefix
from rideshare.nats_cluster import nats_servers

__all__ = [
    "DEADLETTER_DELIVERIES_HEADER",
    "DEADLETTER_ERROR_HEADER",
    "DEADLETTER_SUBJECT_HEADER",
    "ConsumerStats",
    "DurableConsumer",
    "Envelope",
    "EnvelopeError",
    "Handler",
    "claim_event",
    "connect",
    "deadletter_subject",
    "decode_envelope",
    "encode_envelope",
    "ensure_stream",
    "make_envelope",
    "publish_envelope",
    "reraise_if_cancelling",
    "run_consumer",
]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# Headers on a dead-lettered copy: why it failed, where it came from, how often it was tried.
DEADLETTER_ERROR_HEADER = "Rideshare-Error"
DEADLETTER_SUBJECT_HEADER = "Rideshare-Original-Subject"
DEADLETTER_DELIVERIES_HEADER = "Rideshare-Deliveries"

# JetStream error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058


# -- connection ------------------------------------------------------------------------------


async def connect(
    url: str,
    *,
    name: str,
    connect_timeout_s: float = 2.0,
    initial_timeout_s: float = 10.0,
    reconnect_wait_s: float = 1.0,
    ping_interval_s: int = 10,
    pending_bytes: int = 8 * 1024 * 1024,
) -> NATS:
    """A NATS connection that reconnects for ever once established.

    The first connection must succeed within ``initial_timeout_s`` (a wrong URL fails start-up
    instead of hanging); after that, a lost server is retried every ``reconnect_wait_s``
    (with jitter) without limit, and disconnects, reconnects and errors are logged.

    A server that stops answering without closing the socket is noticed after three missed
    pings, ``ping_interval_s`` apart (nats-py waits 2 x 120 s by default). While
    disconnected, publishes are buffered up to ``pending_bytes`` and sent on reconnect; past
    that they fail (OutboundBufferLimitError, an outage: UNAVAILABLE to a gRPC caller), so a
    long outage costs bounded memory. Subscriptions, including the inboxes of pull
    consumers, are renewed on reconnect by the client.

    ``url`` may name several servers of a cluster (rideshare.nats_cluster.nats_servers): the
    first connection goes to any that answers, and a lost server is replaced by another.

    Replies (requests, JetStream acks, fetched messages) come to the inbox of the URL's user,
    ``_INBOX.<user>.>``: the one inbox its NATS permissions let it read (infra_users.py).
    """

    async def on_error(exc: Exception) -> None:
        logger.warning("nats %s: %s", name, exc)

    async def on_disconnected() -> None:
        logger.warning("nats %s: disconnected", name)

    async def on_reconnected() -> None:
        url = nc.connected_url
        address = url.netloc.rpartition("@")[2] if url else None  # no password in logs
        logger.info("nats %s: reconnected to %s", name, address)

    async def on_closed() -> None:
        logger.info("nats %s: closed", name)

    servers = nats_servers(url)
    nc = NATS()
    try:
        async with asyncio.timeout(initial_timeout_s):
            await nc.connect(
                servers=servers,
                name=name,
                connect_timeout=connect_timeout_s,  # type: ignore[arg-type]  # float is fine
                reconnect_time_wait=reconnect_wait_s,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                ping_interval=ping_interval_s,
                max_outstanding_pings=3,
                pending_size=pending_bytes,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
                inbox_prefix=inbox_prefix(urlsplit(servers[0]).username),
            )
    except BaseException:
        await nc.close()
        raise
    return nc


async def ensure_stream(
    js: JetStreamContext,
    *,
    name: str = STREAM,
    subjects: Sequence[str] = STREAM_SUBJECTS,
    duplicate_window_s: float = 120.0,
    replicas: int | None = None,
) -> None:
    """Create the stream, or update it to these subjects and duplicate window; idempotent.

    ``replicas`` is how many nodes hold each message (1 on a single server, 3 in a cluster);
    a cluster moves an existing stream to a new count in place. None keeps an existing
    stream's count (and makes a new stream R1): what a tool that does not know the
    deployment passes, so that it never scales the services' stream down.

    Safe when several processes call it at once: creating an identical stream succeeds.
    """
    config = StreamConfig(
        name=name,
        subjects=list(subjects),
        duplicate_window=duplicate_window_s,
        num_replicas=replicas or 1,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        if replicas is None:
            config.num_replicas = (await js.stream_info(name)).config.num_replicas
        await js.update_stream(config)


# -- envelopes -------------------------------------------------------------------------------


class EnvelopeError(ValueError):
    """Bytes that are not a valid event envelope."""


@dataclass(frozen=True)
class Envelope:
    """An event as it travels: identity, aggregate position and the serialized payload."""

    event_id: str
    occurred_at: datetime
    aggregate_id: str
    aggregate_version: int
    type: str
    payload: bytes

    def unpack(self, message_type: builtins.type[M]) -> M:
        """The payload parsed as ``message_type``; :class:`EnvelopeError` if it does not parse."""
        message = message_type()
        try:
            message.ParseFromString(self.payload)
        except DecodeError as exc:
            raise EnvelopeError(
                f"event {self.event_id} ({self.type}): payload is not a "
                f"{message_type.DESCRIPTOR.full_name}: {exc}"
            ) from exc
        return message


def make_envelope(
    payload: Message,
    *,
    type: str,
    aggregate_id: str,
    aggregate_version: int,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """A new envelope around ``payload`` with a fresh event id and the current time."""
    return Envelope(
        event_id=event_id if event_id is not None else uuid.uuid4().hex,
        occurred_at=occurred_at if occurred_at is not None else datetime.now(UTC),
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        type=type,
        payload=payload.SerializeToString(),
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope as serialized ``EventEnvelope`` bytes."""
    message = common_pb2.EventEnvelope(
        event_id=envelope.event_id,
        aggregate_id=envelope.aggregate_id,
        aggregate_version=envelope.aggregate_version,
        type=envelope.type,
        payload=envelope.payload,
    )
    message.occurred_at.FromDatetime(envelope.occurred_at)
    return message.SerializeToString()


def decode_envelope(data: bytes) -> Envelope:
    """Parse ``EventEnvelope`` bytes; :class:`EnvelopeError` when they are not a valid one."""
    message = common_pb2.EventEnvelope()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise EnvelopeError(f"not an EventEnvelope: {exc}") from exc
    if not message.event_id or not message.type:
        raise EnvelopeError("not an EventEnvelope: event_id and type are required")
    return Envelope(
        event_id=message.event_id,
        occurred_at=message.occurred_at.ToDatetime(tzinfo=UTC),
        aggregate_id=message.aggregate_id,
        aggregate_version=message.aggregate_version,
        type=message.type,
        payload=message.payload,
    )


async def publish_envelope(
    js: JetStreamContext, envelope: Envelope, *, subject: str | None = None, timeout_s: float = 5.0
) -> None:
    """Publish to JetStream with ``Nats-Msg-Id: <event_id>`` and wait for the stream's ack.

    The subject defaults to the envelope's type. Services publish their events through the
    outbox (outbox.py) rather than calling this right after a commit.
    """
    await js.publish(
        subject if subject is not None else envelope.type,
        encode_envelope(envelope),
        timeout=timeout_s,
        headers={MSG_ID_HEADER: envelope.event_id},
    )


def reraise_if_cancelling() -> None:
    """Raise CancelledError if the current task is being cancelled; call in ``except Exception``.

    Some library code turns a cancellation into an ordinary exception (nats-py's
    ``publish_async`` raises ``TooManyStalledMsgsError`` when cancelled while waiting for a
    slot) or drops it (its publish flushing has ``except CancelledError: pass``); a worker
    loop that logs and carries on would then never stop. Call it in such handlers and at the
    top of worker loops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# -- idempotent consumers --------------------------------------------------------------------


async def claim_event(conn: asyncpg.Connection, *, consumer: str, event_id: str) -> bool:
    """Record that ``consumer`` handles ``event_id``, inside the caller's transaction.

    True: first time, go ahead with the effect in this same transaction. False: already
    handled (the insert conflicted), so ack the message and skip it.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("claim_event must run inside the transaction of the event's effect")
    inserted = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return inserted is not None


Handler = Callable[[Envelope, Msg], Awaitable[None]]


def deadletter_subject(durable: str) -> str:
    """Where the poison messages of consumer ``durable`` go."""
    return f"deadletter.{durable}"


@dataclass
class ConsumerStats:
    """What one consumer copy has done since it started."""

    acked: int = 0
    naked: int = 0
    deadlettered: int = 0


class DurableConsumer:
    """A durable pull consumer with explicit acks, retries with backoff and a dead letter.

    Each message is decoded and handed to ``handler``; success acks it, an exception naks it
    with a delay from ``backoff_s`` (indexed by delivery count), and on the ``max_deliver``-th
    failed delivery a copy with the error goes to ``deadletter`` (default
    ``deadletter.<durable>``) and the original is terminated, so one poison message never
    blocks the ones behind it. Messages that are not envelopes go to the dead letter at once.

    Several copies with the same ``durable`` share the work: each fetch hands a batch to one
    copy. While a copy works through a batch it tells the server, every third of
    ``ack_wait_s``, that the messages it has not settled yet are in progress, so a slow batch
    is not redelivered to another copy behind its back; a copy that dies (``kill -9``, a
    lost host) stops saying so, and the server hands what it held to another copy
    ``ack_wait_s`` later. That is why ``ack_wait_s`` is short (10 s): it is the failover
    time, while ``handler_timeout_s`` bounds one handler call.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler,
        max_deliver: int = 5,
        ack_wait_s: float = 10.0,
        batch: int = 100,
        fetch_timeout_s: float = 1.0,
        backoff_s: Sequence[float] = (1.0, 5.0, 15.0, 30.0),
        deadletter: str | None = None,
        publish_timeout_s: float = 5.0,
        only_new: bool = False,
        max_error_backoff_s: float = 5.0,
        handler_timeout_s: float = 30.0,
    ) -> None:
        if not filter_subjects:
            raise ValueError("a consumer needs at least one filter subject")
        if max_deliver < 1 or batch < 1 or not backoff_s:
            raise ValueError("max_deliver and batch must be >= 1 and backoff_s non-empty")
        self._js = js
        self.stream = stream
        self.durable = durable
        self.filter_subjects = list(filter_subjects)
        self._handler = handler
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.handler_timeout_s = handler_timeout_s
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.backoff_s = list(backoff_s)
        self.deadletter = deadletter if deadletter is not None else deadletter_subject(durable)
        self.publish_timeout_s = publish_timeout_s
        self.max_error_backoff_s = max_error_backoff_s
        # A consumer of live state (say, availability) has no use for history: when first
        # created it starts at the stream's end instead of replaying every stored event.
        self.deliver_policy = DeliverPolicy.NEW if only_new else DeliverPolicy.ALL
        self.stats = ConsumerStats()

    def _config(self) -> ConsumerConfig:
        single = len(self.filter_subjects) == 1
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            # One delivery more than we handle: if the process dies during the last allowed
            # delivery, the extra one still reaches us and is dead-lettered instead of the
            # server silently giving up on it.
            max_deliver=self.max_deliver + 1,
            filter_subject=self.filter_subjects[0] if single else None,
            filter_subjects=None if single else self.filter_subjects,
            deliver_policy=self.deliver_policy,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (checked between fetches).

        Never ends because NATS went away: a failed fetch is logged and retried after a
        backoff that doubles up to ``max_error_backoff_s``. The durable consumer lives in the
        JetStream store, so after NATS restarts the fetches resume where the acks left off;
        one that is gone (a store lost with the server) is created again.
        """
        await self._create_or_update()
        sub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        failures = 0
        try:
            while not stop.is_set():
                # nats-py swallows a cancellation that lands inside some of its awaits;
                # honour it here at the latest.
                reraise_if_cancelling()
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout_s)
                except TimeoutError:  # nats.errors.TimeoutError, or a bare one from nats-py
                    continue  # nothing to do this round
                except Exception as exc:
                    reraise_if_cancelling()
                    failures += 1
                    await self._recover(exc, failures, stop)
                    continue
                if failures:
                    logger.info("consumer %s: fetching again", self.durable)
                    failures = 0
                keeper = asyncio.create_task(self._keep_in_progress(msgs))
                try:
                    await self._process_batch(msgs)
                finally:
                    keeper.cancel()
                    await asyncio.wait([keeper])
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                reraise_if_cancelling()
                logger.info("consumer %s: unsubscribe failed: %r", self.durable, exc)

    async def _keep_in_progress(self, msgs: Sequence[Msg]) -> None:
        """Until cancelled: every third of the ack wait, tell the server that this copy still
        works on the batch's unsettled messages (they would go to another copy otherwise)."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            for msg in msgs:
                if msg.is_acked:
                    continue
                try:
                    await msg.in_progress()
                except Exception as exc:
                    reraise_if_cancelling()
                    # Connection trouble: the message may be redelivered, and is deduped.
                    logger.debug("consumer %s: in-progress failed: %r", self.durable, exc)

    async def _recover(self, exc: Exception, failures: int, stop: asyncio.Event) -> None:
        """After a failed fetch: log (once, then at the backoff cap), wait, and recreate the
        consumer if the server no longer has it."""
        delay = min(self.fetch_timeout_s * 2 ** (failures - 1), self.max_error_backoff_s)
        if failures == 1 or delay >= self.max_error_backoff_s:
            logger.warning(
                "consumer %s: fetch failed (%r), retry in %.1fs", self.durable, exc, delay
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        if isinstance(exc, nats.js.errors.NotFoundError) and not stop.is_set():
            try:
                await self._create_or_update()
            except Exception as again:
                reraise_if_cancelling()
                logger.warning("consumer %s: recreating failed: %r", self.durable, again)

    async def _create_or_update(self) -> None:
        """Create the durable, or update it: copies starting together with one config all
        succeed. The deliver policy cannot change on an existing consumer: a consumer of
        live state (``only_new``) loses nothing by being recreated at the stream's end; any
        other must be migrated by an operator, so it fails with a message that says so."""
        try:
            existing = await self._js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            existing = None
        if existing is not None and existing.config.deliver_policy not in (
            None,
            self.deliver_policy,
        ):
            if self.deliver_policy is not DeliverPolicy.NEW:
                raise RuntimeError(
                    f"consumer {self.durable!r} on stream {self.stream!r} exists with deliver "
                    f"policy {existing.config.deliver_policy}, which cannot be updated to "
                    f"{self.deliver_policy}; delete it (nats consumer rm) to recreate it"
                )
            logger.warning("consumer %s: recreating it at the stream's end", self.durable)
            await self._js.delete_consumer(self.stream, self.durable)
        await self._js.add_consumer(self.stream, self._config())

    async def _process_batch(self, msgs: Sequence[Msg]) -> None:
        """Handle one fetched batch. A subclass may override this to handle the batch
        together (say, in one transaction) and fall back to ``_process`` per message."""
        # Sequential on purpose: events of one aggregate arrive in order and are handled in
        # order. Errors are caught per message inside _process.
        for msg in msgs:
            await self._process(msg)

    async def _process(self, msg: Msg) -> None:
        try:
            deliveries = msg.metadata.num_delivered
            try:
                envelope = decode_envelope(msg.data)
            except EnvelopeError as exc:
                await self._dead_letter(msg, exc, deliveries)
                return
            if deliveries > self.max_deliver:
                await self._dead_letter(
                    msg, RuntimeError("delivered too often without an ack"), deliveries
                )
                return
            try:
                # Bounded, so one stuck call cannot hold the batch (kept in progress) forever.
                async with asyncio.timeout(self.handler_timeout_s):
                    await self._handler(envelope, msg)
            except Exception as exc:
                reraise_if_cancelling()
                if deliveries >= self.max_deliver:
                    await self._dead_letter(msg, exc, deliveries)
                else:
                    delay = self.backoff_s[min(deliveries, len(self.backoff_s)) - 1]
                    logger.warning(
                        "consumer %s: event %s (%s) failed on delivery %d, retry in %ss: %r",
                        self.durable,
                        envelope.event_id,
                        msg.subject,
                        deliveries,
                        delay,
                        exc,
                    )
                    await msg.nak(delay=delay)
                    self.stats.naked += 1
                return
            try:
                await msg.ack()
            except nats.errors.MsgAlreadyAckdError:
                pass  # the handler settled it itself
            self.stats.acked += 1
        except Exception:
            reraise_if_cancelling()
            # Per message, never around the loop: ack/nak/dead-letter failed (connection
            # trouble); the server redelivers after ack_wait.
            logger.exception(
                "consumer %s: could not settle message on %s", self.durable, msg.subject
            )

    async def _dead_letter(self, msg: Msg, exc: BaseException, deliveries: int) -> None:
        headers = {key: value for key, value in (msg.headers or {}).items() if key != MSG_ID_HEADER}
        headers[DEADLETTER_ERROR_HEADER] = f"{type(exc).__name__}: {exc}"[:1000]
        headers[DEADLETTER_SUBJECT_HEADER] = msg.subject
        headers[DEADLETTER_DELIVERIES_HEADER] = str(deliveries)
        # A fresh msg id of its own: the original's id is already in the stream's dedupe
        # window (the copy would be dropped); keyed by stream sequence so a retried
        # dead-lettering of the same message stays one copy.
        headers[MSG_ID_HEADER] = f"{self.durable}:{msg.metadata.sequence.stream}"
        try:
            await self._js.publish(
                self.deadletter, msg.data, timeout=self.publish_timeout_s, headers=headers
            )
        except nats.js.errors.NoStreamResponseError:
            # No stream keeps the dead-letter subject: the copy cannot be stored. Log the
            # message in full so it is not lost without a trace, then terminate it anyway so
            # it stops blocking redeliveries.
            logger.error(
                "consumer %s: no stream stores %s; dropping message %s on %s "
                "(headers %s, %d bytes) after %d deliveries",
                self.durable,
                self.deadletter,
                msg.metadata.sequence.stream,
                msg.subject,
                headers,
                len(msg.data),
                deliveries,
            )
        await msg.term()
        self.stats.deadlettered += 1
        logger.error(
            "consumer %s: message %s on %s dead-lettered to %s after %d deliveries: %r",
            self.durable,
            msg.metadata.sequence.stream,
            msg.subject,
            self.deadletter,
            deliveries,
            exc,
        )


async def run_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subjects: Sequence[str],
    handler: Handler,
    stop: asyncio.Event,
    max_deliver: int = 5,
    ack_wait_s: float = 10.0,
    batch: int = 100,
    fetch_timeout_s: float = 1.0,
    backoff_s: Sequence[float] = (1.0, 5.0, 15.0, 30.0),
    deadletter: str | None = None,
    only_new: bool = False,
) -> ConsumerStats:
    """Run a :class:`DurableConsumer` until ``stop`` is set; returns its counters."""
    consumer = DurableConsumer(
        js,
        stream=stream,
        durable=durable,
        filter_subjects=filter_subjects,
        handler=handler,
        max_deliver=max_deliver,
        ack_wait_s=ack_wait_s,
        batch=batch,
        fetch_timeout_s=fetch_timeout_s,
        backoff_s=backoff_s,
        deadletter=deadletter,
        only_new=only_new,
    )
    await consumer.run(stop)
    return consumer.stats
