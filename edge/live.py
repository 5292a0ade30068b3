"""Live pushes to the sockets of this edge process.

Where updates come from (one choice, documented here):
- Trip events: a core NATS subscription on ``trip.>``. JetStream stores what the trip
  service's outbox relay publishes, but every publish is also delivered to plain subscribers,
  so each edge copy sees every trip event without a consumer of its own. Delivery is at most
  once; that is enough because a socket that (re)connects gets a snapshot read from the trip
  service, and each event carries the whole trip after it (``trip``, as GetTrip shows it), so
  a missed event is repaired by the next one. An event without it (one written by dispatch,
  which works without the trip's history) is turned into a ``GetTrip`` read. Events are
  handled in arrival order by one task; a trip version older than what a socket has seen is
  never sent to it.
- Offers: from ``trip.offered`` to the offered driver, and kept in Redis until they expire so
  that a driver who reconnects sees the pending offer again (checked against GetTrip first);
  ``trip.offer_ended`` ends it on the driver's sockets. The outbox relay may publish an event
  twice (it crashed between publishing and marking it sent: JetStream drops the copy, plain
  subscribers get it), so each offer's two frames are sent once: the ids recently sent are
  remembered (``SEEN_OFFERS`` of them).
- Per-user pushes: core NATS ``notify.user.<id>``, one subscription per connected user.
- The assigned driver's position, for the rider, from ACCEPTED until the trip ends: one core
  NATS subscription on ``location.driver.<id>`` per watched driver in this process (where the
  location service publishes every position it applied), shared by every socket of that
  trip's rider; it starts with the last known position from ``GetPosition`` (the snapshot).
  A socket that falls behind gets the newest position, not a queue of stale ones
  (``Connection.send_latest``).
  The edge does not hold a ``WatchDriver`` stream: that would take the positions out to the
  location service and back over gRPC, for what NATS already brings to this process
  (docs/PERFORMANCE.md, edge).

Every frame is built by edge/wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from redis.exceptions import RedisError

from edge import wire
from edge.errors import ApiError
from edge.metrics import WS_CONNECTIONS
from edge.upstreams import LocationStub, TripStub
from edge.wsconn import Connection
from protos import events
from protos.location.v1 import location_pb2
from protos.notification.v1 import notification_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import bus
from rideshare.identity import User, acting_as
from rideshare.redis_client import RedisClient

__all__ = ["LiveHub"]

logger = logging.getLogger(__name__)

TRIP_WILDCARD = "trip.>"
OFFER_KEY = "edge:offer:"
_WATCHED_STATES = frozenset(
    {trip_pb2.TRIP_STATE_ACCEPTED, trip_pb2.TRIP_STATE_ARRIVED, trip_pb2.TRIP_STATE_IN_PROGRESS}
)
_LIVE_STATES = [
    trip_pb2.TRIP_STATE_REQUESTED,
    trip_pb2.TRIP_STATE_DISPATCHING,
    *sorted(_WATCHED_STATES),
]
PING_SLICE_S = 0.1
# Positions of one watched driver waiting in this process; beyond it NATS drops the oldest
# (a newer position supersedes them), as it did for the location service's own watchers.
WATCH_PENDING = 256
# Offers ended by a change of the trip whose own event follows in the same transaction and
# carries the trip: reading the trip back for the rider's socket would send nothing new.
_ENDED_WITH_THE_TRIPS_EVENT = frozenset(
    {
        trip_events.OFFER_END_REASON_ACCEPTED_ELSEWHERE,
        trip_events.OFFER_END_REASON_TRIP_CANCELLED,
        trip_events.OFFER_END_REASON_TRIP_ENDED,
    }
)
# Offer frames recently sent, by (frame type, offer id): far more than an edge sends within
# the relay's redelivery time (seconds), a few MB at most.
SEEN_OFFERS = 20_000


@dataclass
class _Watch:
    """One driver's live positions and the rider sockets they feed."""

    driver_id: str
    conns: set[Connection] = field(default_factory=set)
    last: str | None = None
    last_ts_ms: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        """The socket's latest-wins slot for this driver's position (edge/wsconn.py)."""
        return "position:" + self.driver_id


class LiveHub:
    """Routes trip events, notifications and driver positions to this process's sockets."""

    def __init__(
        self,
        nc: NATS,
        *,
        trip: TripStub,
        location: LocationStub,
        redis: RedisClient,
        ping_interval_s: float = 4.0,
    ) -> None:
        self._nc = nc
        self._trip = trip
        self._location = location
        self._redis = redis
        self._ping_interval_s = ping_interval_s
        self._conns: dict[str, set[Connection]] = {}
        self._user_subs: dict[str, Subscription] = {}
        self._watches: dict[str, _Watch] = {}
        self._watch_of: dict[Connection, str] = {}  # rider socket -> driver it watches
        self._events: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)
        # Sockets by ping slot, filled round robin (see _ping_loop).
        self._ping_slots: list[set[Connection]] = [
            set() for _ in range(max(1, round(ping_interval_s / PING_SLICE_S)))
        ]
        self._next_slot = 0
        self._slot_of: dict[Connection, int] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._seen_offers: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe and serve until ``stop``; then close every socket (1001)."""
        sub = await self._nc.subscribe(TRIP_WILDCARD, cb=self._on_trip_msg)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                workers = [
                    tg.create_task(self._event_loop(), name="trip-events"),
                    tg.create_task(self._ping_loop(), name="ws-ping"),
                ]
                await stop.wait()
                for task in workers:
                    task.cancel()
                for watch in list(self._watches.values()):
                    if watch.task is not None:
                        watch.task.cancel()
                for conns in self._conns.values():
                    for conn in conns:
                        conn.close(1001)
        finally:
            self._tasks = None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_trip_msg(self, msg: Msg) -> None:
        try:
            self._events.put_nowait(msg)
        except asyncio.QueueFull:
            logger.warning("trip event queue full; dropping %s", msg.subject)

    async def _ping_loop(self) -> None:
        """Every socket gets a ping once per interval, a slice of them every PING_SLICE_S:
        pinging thousands at once woke as many writers in one loop iteration, a stall that
        every live position behind it waited out."""
        slots = len(self._ping_slots)
        step = self._ping_interval_s / slots
        i = 0
        while True:
            await asyncio.sleep(step)
            text = wire.ping_frame(time.time_ns() // 1_000_000)
            for conn in self._ping_slots[i]:
                conn.send_latest("ping", text)
            i = (i + 1) % slots

    # -- sockets ------------------------------------------------------------------------------

    async def register(self, conn: Connection) -> None:
        """Start routing to ``conn`` and send it its snapshot."""
        sub = conn.principal.sub
        conns = self._conns.setdefault(sub, set())
        conns.add(conn)
        self._slot_of[conn] = slot = self._next_slot
        self._ping_slots[slot].add(conn)
        self._next_slot = (slot + 1) % len(self._ping_slots)
        WS_CONNECTIONS.labels(conn.principal.role).inc()
        if sub not in self._user_subs:
            with contextlib.suppress(ValueError):  # an id unfit for a subject gets no pushes
                self._user_subs[sub] = await self._nc.subscribe(
                    events.notify_user_subject(sub), cb=self._on_notification
                )
        await self._snapshot(conn)

    async def unregister(self, conn: Connection) -> None:
        sub = conn.principal.sub
        conns = self._conns.get(sub)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        self._ping_slots[self._slot_of.pop(conn)].discard(conn)
        WS_CONNECTIONS.labels(conn.principal.role).dec()
        self._unwatch(conn)
        if not conns:
            del self._conns[sub]
            subscription = self._user_subs.pop(sub, None)
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    def connections(self, user_id: str) -> Iterable[Connection]:
        return tuple(self._conns.get(user_id, ()))

    async def _snapshot(self, conn: Connection) -> None:
        p = conn.principal
        rider = p.role == "rider"
        request = trip_pb2.ListTripsRequest(states=_LIVE_STATES, page_size=1)
        if rider:
            request.rider_id = p.sub
        else:
            request.driver_id = p.sub
        try:
            with acting_as(User(p.role, p.sub)):
                trips = await self._trip.ListTrips(request)
            for trip in trips.trips:
                self._send_trip(conn, trip, "snapshot")
            if not rider:
                await self._send_pending_offer(conn)
        except ApiError as exc:
            conn.send(wire.error_frame(exc.code, exc.message))

    async def _send_pending_offer(self, conn: Connection) -> None:
        try:
            raw = await self._redis.get(OFFER_KEY + conn.principal.sub)
        except RedisError as exc:
            # The offer still reaches the driver when it is made again or through GET /v1/trips.
            logger.warning("pending offer of %s not read: %r", conn.principal.sub, exc)
            return
        if raw is None:
            return
        frame = json.loads(raw)
        try:
            trip = await self._trip.GetTrip(
                trip_pb2.GetTripRequest(
                    trip_id=frame["trip_id"],
                    actor=trip_pb2.ACTOR_DRIVER,
                    actor_id=conn.principal.sub,
                )
            )
        except ApiError as exc:
            if exc.status == 404:  # the offer ended: the driver no longer sees the trip
                return
            raise
        if trip.state == trip_pb2.TRIP_STATE_DISPATCHING and any(
            offer.offer_id == frame["offer_id"] and offer.driver_id == conn.principal.sub
            for offer in trip.current_offers
        ):
            conn.send(frame)

    def _send_trip(self, conn: Connection, trip: trip_pb2.Trip, event: str) -> None:
        if not conn.trip_is_new(trip.id, trip.version):
            return
        rider = conn.principal.role == "rider"
        conn.send(wire.trip_frame(trip, event, rider=rider))
        if rider:
            if trip.state in _WATCHED_STATES and trip.driver_id:
                self._watch(conn, trip.driver_id)
            else:
                self._unwatch(conn)

    # -- notifications ------------------------------------------------------------------------

    async def _on_notification(self, msg: Msg) -> None:
        n = notification_pb2.Notification()
        try:
            n.ParseFromString(msg.data)
        except Exception:
            logger.warning("undecodable notification on %s", msg.subject)
            return
        frame = wire.notification_frame(n)
        for conn in self.connections(n.user_id or msg.subject.rsplit(".", 1)[-1]):
            conn.send(frame)

    # -- trip events --------------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            msg = await self._events.get()
            try:
                await self._handle_trip_event(msg.subject, msg.data)
            except ApiError as exc:
                logger.warning("trip event %s not pushed: %s", msg.subject, exc.message)
            except Exception:
                logger.exception("trip event %s not pushed", msg.subject)

    async def _handle_trip_event(self, subject: str, data: bytes) -> None:
        try:
            envelope = bus.decode_envelope(data)
            payload: Any = envelope.unpack(events.payload_type(envelope.type))
        except (bus.EnvelopeError, KeyError, ValueError):
            logger.warning("undecodable trip event on %s", subject)
            return
        if envelope.type == events.TRIP_OFFERED:
            if self._first_time("offer", payload.offer_id):
                await self._push_offer(payload)
            return
        if envelope.type == events.TRIP_OFFER_ENDED:
            if not self._first_time("offer_ended", payload.offer_id):
                return
            frame = wire.offer_ended_frame(payload)
            for conn in self.connections(payload.driver_id):
                conn.send(frame)
            if payload.reason in _ENDED_WITH_THE_TRIPS_EVENT:
                return  # the trip's own event (accepted, cancelled, no_drivers) shows it
        users = {
            getattr(payload, name, "") for name in ("rider_id", "driver_id", "rater_id", "ratee_id")
        } - {""}
        targets = [conn for user in users for conn in self.connections(user)]
        if not targets:
            return
        if "trip" in payload.DESCRIPTOR.fields_by_name and payload.HasField("trip"):
            trip: trip_pb2.Trip = payload.trip
        else:
            trip_id = getattr(payload, "trip_id", "") or envelope.aggregate_id
            trip = await self._trip.GetTrip(trip_pb2.GetTripRequest(trip_id=trip_id))
        for conn in targets:
            # Only the trip's own parties: an offered-but-declined driver is not one.
            if conn.principal.sub in (trip.rider_id, trip.driver_id):
                self._send_trip(conn, trip, envelope.type)

    def _first_time(self, frame_type: str, offer_id: str) -> bool:
        """Whether the ``frame_type`` frame of ``offer_id`` was not sent yet (and now is)."""
        key = (frame_type, offer_id)
        if key in self._seen_offers:
            return False
        self._seen_offers[key] = None
        if len(self._seen_offers) > SEEN_OFFERS:
            self._seen_offers.popitem(last=False)
        return True

    async def _push_offer(self, offer: trip_events.TripOffered) -> None:
        frame = wire.offer_frame(offer)
        ttl_ms = offer.expires_at.ToMilliseconds() - time.time_ns() // 1_000_000
        if ttl_ms > 0:
            try:
                await self._redis.set(OFFER_KEY + offer.driver_id, json.dumps(frame), px=ttl_ms)
            except RedisError as exc:
                logger.warning("offer not kept for reconnects: %s", exc)
        for conn in self.connections(offer.driver_id):
            conn.send(frame)

    # -- driver positions for riders ----------------------------------------------------------

    def _watch(self, conn: Connection, driver_id: str) -> None:
        if self._watch_of.get(conn) == driver_id:
            return
        self._unwatch(conn)
        watch = self._watches.get(driver_id)
        if watch is None:
            watch = self._watches[driver_id] = _Watch(driver_id)
            if self._tasks is not None:
                watch.task = self._tasks.create_task(self._follow(watch))
        watch.conns.add(conn)
        self._watch_of[conn] = driver_id
        if watch.last is not None:
            conn.send_latest(watch.key, watch.last, watch.last_ts_ms)

    def _unwatch(self, conn: Connection) -> None:
        driver_id = self._watch_of.pop(conn, None)
        if driver_id is None:
            return
        watch = self._watches.get(driver_id)
        if watch is None:
            return
        watch.conns.discard(conn)
        if not watch.conns:
            del self._watches[driver_id]
            if watch.task is not None:
                watch.task.cancel()

    async def _follow(self, watch: _Watch) -> None:
        """Feed ``watch`` from NATS until cancelled (its last socket left). Subscribed before
        the snapshot is read, so no position falls between the two; neither goes back in
        time."""
        try:
            subject = events.location_driver_subject(watch.driver_id)
        except ValueError:
            return  # not an id the location service publishes under

        async def on_position(msg: Msg) -> None:
            try:
                position = location_pb2.DriverPosition.FromString(msg.data)
            except Exception:
                logger.warning("undecodable position on %s", msg.subject)
                return
            self._deliver(watch, position)

        sub = await self._nc.subscribe(subject, cb=on_position, pending_msgs_limit=WATCH_PENDING)
        try:
            try:
                snapshot = await self._location.GetPosition(
                    location_pb2.GetPositionRequest(driver_id=watch.driver_id)
                )
            except ApiError as exc:
                if exc.status != 404:  # no position yet is normal; the live ones follow
                    logger.info("snapshot of driver %s: %s", watch.driver_id, exc.message)
            else:
                self._deliver(watch, snapshot)
            await asyncio.Event().wait()  # until cancelled
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _deliver(self, watch: _Watch, position: location_pb2.DriverPosition) -> None:
        if position.client_ts_ms <= watch.last_ts_ms:
            return
        watch.last_ts_ms = position.client_ts_ms
        watch.last = text = wire.position_frame(position)
        key = watch.key
        for conn in tuple(watch.conns):
            conn.send_latest(key, text, position.client_ts_ms)
