"""What the notification service consumes (trip.*, driver.*, rider.* from JetStream) and
publishes (the bare Notification on core NATS ``notify.user.<user_id>``).

Consuming: :class:`NotificationConsumer` is the bus's durable consumer, handling each fetched
batch in ONE transaction (:class:`EventProcessor`): per event, in stream order, claim it
(processed_events), update the read models, render the templates; then insert every
notification, all committed together before any message is acked. If the batch fails, each
message is handled alone, so only a poison message is retried, with backoff, and finally
dead-lettered by the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter

from notification.domain import (
    DRIVER_FIELDS,
    UNKNOWN_DRIVER_FACTS,
    Channel,
    DriverVehicle,
    Notification,
    eta_minutes,
    format_distance,
    format_money,
    plan,
)
from notification.store import Batch, NotificationStore
from notification.templates import TEMPLATES
from protos import events
from protos.common.v1 import common_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import events_pb2 as rider_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare.bus import DurableConsumer, Envelope, EnvelopeError, decode_envelope

__all__ = [
    "CONSUMED_SUBJECTS",
    "DURABLE",
    "EVENTS_DEADLETTERED",
    "EVENTS_PROCESSED",
    "EventProcessor",
    "InAppFeed",
    "NotificationConsumer",
    "facts_of",
    "to_proto",
]

logger = logging.getLogger(__name__)

DURABLE: Final = "notification"

EVENTS_PROCESSED = Counter(
    "notification_events_processed_total",
    "Events taken off the stream and acked, by result: notified (made notifications), "
    "read_model (updated a read model only), duplicate (seen before), ignored (not ours).",
    ["result"],
)
EVENTS_DEADLETTERED = Counter(
    "notification_events_deadlettered_total",
    "Events given up on after the delivery bound and copied to the dead-letter subject.",
)

Facts = dict[str, str]

# -- facts: event payload -> the strings templates use ---------------------------------------


def _money(money: common_pb2.Money) -> str:
    return format_money(money.amount_minor, money.currency) if money.currency else "-"


def _place(address: str, point: common_pb2.LatLng) -> str:
    return address or f"{point.lat:.5f}, {point.lng:.5f}"


def _offered(e: trip_events.TripOffered) -> Facts:
    return {
        "trip_id": e.trip_id,
        "driver_id": e.driver_id,
        "rider_id": e.rider_id,
        "offer_id": e.offer_id,
        "expires_at": e.expires_at.ToJsonString() if e.HasField("expires_at") else "",
        "fare": _money(e.fare),
        "pickup": _place(e.pickup_address, e.pickup),
        "distance_to_pickup": format_distance(e.distance_to_pickup_m),
        "distance_to_pickup_m": str(round(e.distance_to_pickup_m)),
    }


def _accepted(e: trip_events.TripAccepted) -> Facts:
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "eta_s": str(e.eta_s),
        "eta_min": str(eta_minutes(e.eta_s)),
    }


def _arrived(e: trip_events.TripArrived) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id, "driver_id": e.driver_id}


def _started(e: trip_events.TripStarted) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id, "driver_id": e.driver_id}


def _completed(e: trip_events.TripCompleted) -> Facts:
    # Events from before completed_by existed were all the driver's.
    by_service = e.completed_by in (trip_pb2.ACTOR_SYSTEM, trip_pb2.ACTOR_ADMIN)
    return {
        "completed_by": "service" if by_service else "driver",
        "reason": e.reason,
        "charge_basis": trip_pb2.ChargeBasis.Name(e.charge_basis)
        .removeprefix("CHARGE_BASIS_")
        .lower(),
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "fare": _money(e.fare),
        "fare_minor": str(e.fare.amount_minor),
        "currency": e.fare.currency,
        "distance": format_distance(e.distance_m),
        "distance_m": str(e.distance_m),
        "duration_min": str(eta_minutes(e.duration_s)),
        "duration_s": str(e.duration_s),
    }


def _no_drivers(e: trip_events.TripNoDrivers) -> Facts:
    return {"trip_id": e.trip_id, "rider_id": e.rider_id}


# What each side is told when the system took the trip from its driver (the trip's clock ran
# out, trip/liveness.py): (rider, driver).
_REPLACED: Final[Mapping[int, tuple[str, str]]] = {
    trip_events.LIVENESS_RULE_DRIVER_SILENT: (
        "We lost contact with your driver.",
        "We had no location from your app for too long.",
    ),
    trip_events.LIVENESS_RULE_PICKUP_TOO_LONG: (
        "Your driver was taking too long to reach you.",
        "You did not reach the pickup in time.",
    ),
}
_REPLACED_OTHERWISE: Final = ("Your driver could not continue.", "We had to take the trip back.")


def _driver_cancelled(e: trip_events.TripDriverCancelled) -> Facts:
    rider_text, driver_text = _REPLACED.get(e.liveness_rule, _REPLACED_OTHERWISE)
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "reason": e.reason,
        # A driver's own cancel (or going offline) vs the system taking the trip from them.
        "released_by": "driver" if not e.liveness_rule else "service",
        "rider_text": rider_text,
        "driver_text": driver_text,
    }


_CANCELLED_BY = {
    trip_pb2.ACTOR_RIDER: "rider",
    trip_pb2.ACTOR_DRIVER: "driver",
    trip_pb2.ACTOR_SYSTEM: "service",
    trip_pb2.ACTOR_ADMIN: "service",
}


def _cancelled(e: trip_events.TripCancelled) -> Facts:
    fee = e.fee if e.HasField("fee") and e.fee.amount_minor else None
    return {
        "trip_id": e.trip_id,
        "rider_id": e.rider_id,
        "driver_id": e.driver_id,
        "cancelled_by": _CANCELLED_BY.get(e.cancelled_by, ""),
        "reason": e.reason,
        "fee_text": f"A fee of {_money(fee)} was charged." if fee else "You were not charged.",
    }


def _rated(e: trip_events.TripRated) -> Facts:
    return {"trip_id": e.trip_id, "ratee_id": e.ratee_id, "stars": str(e.stars)}


def _rider_created(e: rider_events.RiderCreated) -> Facts:
    return {"rider_id": e.rider_id, "name": e.name}


def _driver_created(e: driver_events.DriverCreated) -> Facts:
    return {"driver_id": e.driver_id, "name": e.name}


_FACTS: Final[Mapping[str, Callable[[Any], Facts]]] = {
    events.TRIP_OFFERED: _offered,
    events.TRIP_ACCEPTED: _accepted,
    events.TRIP_ARRIVED: _arrived,
    events.TRIP_STARTED: _started,
    events.TRIP_COMPLETED: _completed,
    events.TRIP_NO_DRIVERS: _no_drivers,
    events.TRIP_DRIVER_CANCELLED: _driver_cancelled,
    events.TRIP_CANCELLED: _cancelled,
    events.TRIP_RATED: _rated,
    events.RIDER_CREATED: _rider_created,
    events.DRIVER_CREATED: _driver_created,
}

# Event types whose templates name the driver's car: those look the driver up.
_NEEDS_DRIVER: Final = frozenset(
    subject
    for subject, templates in TEMPLATES.items()
    if any(DRIVER_FIELDS & template.fields() for template in templates)
)


def facts_of(subject: str, message: Message) -> Facts:
    """The template facts of one event payload (KeyError for a subject with no templates)."""
    return _FACTS[subject](message)


# -- read models -----------------------------------------------------------------------------


async def _save_driver_vehicle(
    tx: Batch, envelope: Envelope, e: driver_events.DriverWentOnline
) -> None:
    vehicle = DriverVehicle(
        driver_id=e.driver_id,
        driver_name=e.driver_name,
        make=e.vehicle_make,
        model=e.vehicle_model,
        plate=e.vehicle_plate,
    )
    await tx.upsert_driver_vehicle(
        vehicle, vehicle_class=int(e.vehicle_class), version=envelope.aggregate_version
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
        facts = facts_of(envelope.type, message)
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
        durable: str = DURABLE,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
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
            async with asyncio.timeout(self.ack_wait_s):
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


# -- live in-app delivery --------------------------------------------------------------------


def to_proto(notification: Notification) -> notification_pb2.Notification:
    """The wire form of a notification."""
    message = notification_pb2.Notification(
        id=notification.id,
        user_id=notification.user_id,
        kind=notification.kind,
        title=notification.title,
        body=notification.body,
        data=dict(notification.data),
        trip_id=notification.trip_id,
        channels=[int(c) for c in notification.channels],  # type: ignore[misc]
        event_id=notification.event_id,
    )
    message.created_at.FromDatetime(notification.created_at)
    if notification.read_at is not None:
        message.read_at.FromDatetime(notification.read_at)
    return message


class InAppFeed:
    """The in-app channel: core NATS ``notify.user.<user_id>``, published by whichever copy
    stored the notification, read by the edge and by Subscribe in any copy."""

    def __init__(self, nc: NATS, *, watch_queue: int = 256) -> None:
        self._nc = nc
        self._watch_queue = watch_queue

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish the in-app ones. Called only after their transaction committed: a push
        lost here (no subscriber, NATS down, a crash right now) loses nothing, because the
        stored notification is the record and the app reads it with ListNotifications; and
        a redelivered event is not pushed twice, because it is never committed twice."""
        for notification in notifications:
            if Channel.IN_APP not in notification.channels:
                continue
            try:
                await self._nc.publish(
                    events.notify_user_subject(notification.user_id),
                    to_proto(notification).SerializeToString(),
                )
            except Exception:
                logger.warning(
                    "in-app push of notification %s to %s lost (stored all the same)",
                    notification.id,
                    notification.user_id,
                    exc_info=True,
                )

    @contextlib.asynccontextmanager
    async def watch(
        self, user_id: str
    ) -> AsyncIterator[AsyncIterator[notification_pb2.Notification]]:
        """The user's live notifications while the context is open; subscribed (and the
        interest known to the server) on entry. A watcher too slow to keep up loses the
        oldest (NATS drops them); ListNotifications still has them."""
        sub = await self._nc.subscribe(
            events.notify_user_subject(user_id), pending_msgs_limit=self._watch_queue
        )
        try:
            await self._nc.flush(timeout=5)

            async def stream() -> AsyncIterator[notification_pb2.Notification]:
                async for msg in sub.messages:
                    yield notification_pb2.Notification.FromString(msg.data)

            yield stream()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
