"""What the notification service consumes: trip.*, driver.*, rider.* from JetStream. (What it
publishes live, the in-app channel, is the feed: ``notification/feed.py``.)

:class:`NotificationConsumer` is the bus's durable consumer, handling each fetched batch in
ONE transaction (:class:`EventProcessor`): per event, in stream order, claim it
(processed_events), update the read models, render the templates; then insert every
notification, all committed together before any message is acked. If the batch fails, each
message is handled alone, so only a poison message is retried, with backoff, and finally
dead-lettered by the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from notification import wire
from notification.domain import DRIVER_FIELDS, UNKNOWN_DRIVER_FACTS, Notification, plan
from notification.metrics import EVENTS_DEADLETTERED, EVENTS_PROCESSED
from notification.store import Batch, NotificationStore
from notification.templates import TEMPLATES
from protos import events
from protos.driver.v1 import events_pb2 as driver_events
from protos.rider.v1 import events_pb2 as rider_events
from rideshare.bus import DurableConsumer, Envelope, EnvelopeError, decode_envelope

__all__ = ["CONSUMED_SUBJECTS", "EventProcessor", "NotificationConsumer"]

logger = logging.getLogger(__name__)

# Event types whose templates name the driver's car: those look the driver up.
_NEEDS_DRIVER: Final = frozenset(
    subject
    for subject, templates in TEMPLATES.items()
    if any(DRIVER_FIELDS & template.fields() for template in templates)
)


# -- read models -----------------------------------------------------------------------------


async def _save_driver_vehicle(
    tx: Batch, envelope: Envelope, e: driver_events.DriverWentOnline
) -> None:
    await tx.upsert_driver_vehicle(
        wire.driver_vehicle_of(e),
        vehicle_class=wire.vehicle_class_from_proto(e.vehicle_class),
        version=envelope.aggregate_version,
    )


async def _save_driver(tx: Batch, envelope: Envelope, e: driver_events.DriverCreated) -> None:
    await tx.upsert_user(
        e.driver_id, name=e.name, phone=e.phone, version=envelope.aggregate_version
    )


async def _save_rider(tx: Batch, envelope: Envelope, e: rider_events.RiderCreated) -> None:
    await tx.upsert_user(e.rider_id, name=e.name, phone=e.phone, version=envelope.aggregate_version)


async def _save_rider_update(tx: Batch, envelope: Envelope, e: rider_events.RiderUpdated) -> None:
    await tx.upsert_user(e.rider_id, name=e.name, phone="", version=envelope.aggregate_version)


_READ_MODEL: Final[Mapping[str, Callable[[Batch, Envelope, Any], Awaitable[None]]]] = {
    events.DRIVER_ONLINE: _save_driver_vehicle,
    events.DRIVER_CREATED: _save_driver,
    events.RIDER_CREATED: _save_rider,
    events.RIDER_UPDATED: _save_rider_update,
}

RELEVANT: Final = frozenset(TEMPLATES) | frozenset(_READ_MODEL)
# The consumer filters on exactly these: the stream never hands over events nobody here uses.
CONSUMED_SUBJECTS: Final = tuple(sorted(RELEVANT))

# -- the consumer ----------------------------------------------------------------------------

AfterCommit = Callable[[Sequence[Notification]], Awaitable[None]]


class EventProcessor:
    """Applies a batch of events in one transaction, then hands the new notifications to
    ``after_commit`` (in-app publish, waking the delivery worker)."""

    def __init__(self, store: NotificationStore, *, after_commit: AfterCommit) -> None:
        self._store = store
        self._after_commit = after_commit

    async def process(self, envelopes: Sequence[Envelope]) -> list[Notification]:
        """Apply ``envelopes`` in order; the notifications created, as committed. Raises (and
        changes nothing) when any event cannot be applied."""
        results: dict[str, int] = {}
        drafts: list[Notification] = []
        relevant = [envelope for envelope in envelopes if envelope.type in RELEVANT]
        results["ignored"] = len(envelopes) - len(relevant)
        if relevant:
            async with self._store.batch() as tx:
                for envelope in relevant:
                    made = await self._apply(tx, envelope)
                    if made is None:
                        result = "duplicate"
                    else:
                        result = "notified" if made else "read_model"
                        drafts += made
                    results[result] = results.get(result, 0) + 1
                inserted = await tx.insert_notifications(drafts)
        created = [draft for draft in drafts if draft.id in inserted] if drafts else []
        for result, count in results.items():
            if count:
                EVENTS_PROCESSED.labels(result).inc(count)
        if created:
            await self._after_commit(created)
        return created

    async def _apply(self, tx: Batch, envelope: Envelope) -> list[Notification] | None:
        """The event's effect inside ``tx``: its notifications to insert; None if already
        handled."""
        if not await tx.claim(envelope.event_id):
            return None
        message = envelope.unpack(events.payload_type(envelope.type))
        update = _READ_MODEL.get(envelope.type)
        if update is not None:
            await update(tx, envelope, message)
        templates = TEMPLATES.get(envelope.type)
        if not templates:
            return []
        facts = wire.facts_of(envelope.type, message)
        if envelope.type in _NEEDS_DRIVER:
            vehicle = await tx.driver_vehicle(facts.get("driver_id", ""))
            facts |= vehicle.facts() if vehicle is not None else UNKNOWN_DRIVER_FACTS
        return plan(templates, facts, event_id=envelope.event_id, created_at=envelope.occurred_at)


class NotificationConsumer(DurableConsumer):
    """The bus's durable consumer, applying each fetched batch in one transaction."""

    def __init__(
        self,
        js: JetStreamContext,
        processor: EventProcessor,
        *,
        durable: str,
        max_deliver: int = 5,
        ack_wait_s: float = 10.0,
        batch: int = 100,
        fetch_timeout_s: float = 1.0,
        backoff_s: Sequence[float] = (1.0, 5.0, 15.0, 30.0),
    ) -> None:
        super().__init__(
            js,
            stream=events.STREAM,
            durable=durable,
            filter_subjects=CONSUMED_SUBJECTS,
            handler=self._handle_one,
            max_deliver=max_deliver,
            ack_wait_s=ack_wait_s,
            batch=batch,
            fetch_timeout_s=fetch_timeout_s,
            backoff_s=backoff_s,
        )
        self._processor = processor

    async def _handle_one(self, envelope: Envelope, _msg: Msg) -> None:
        await self._processor.process([envelope])

    async def _process_batch(self, msgs: Sequence[Msg]) -> None:
        if len(msgs) == 1:
            await self._process(msgs[0])
            return
        batch: list[tuple[Envelope, Msg]] = []
        for msg in msgs:
            try:
                envelope = decode_envelope(msg.data)
            except EnvelopeError:
                envelope = None
            if envelope is None or msg.metadata.num_delivered > self.max_deliver:
                await self._process(msg)  # the bus dead-letters it
            else:
                batch.append((envelope, msg))
        try:
            async with asyncio.timeout(self.handler_timeout_s):
                await self._processor.process([envelope for envelope, _ in batch])
        except Exception as exc:
            logger.info(
                "consumer %s: batch of %d failed (%r); handling its messages one by one",
                self.durable,
                len(batch),
                exc,
            )
            # Nothing of the batch committed. Alone, each good message commits on its own
            # and only the bad one is retried with backoff and dead-lettered in the end.
            for _, msg in batch:
                await self._process(msg)
            return
        for _, msg in batch:
            try:
                await msg.ack()
                self.stats.acked += 1
            except Exception:
                # Committed but not acked: redelivered later and skipped by its claim.
                logger.exception("consumer %s: could not ack %s", self.durable, msg.subject)

    async def _dead_letter(self, msg: Msg, exc: BaseException, deliveries: int) -> None:
        await super()._dead_letter(msg, exc, deliveries)
        EVENTS_DEADLETTERED.inc()
