"""A simulated driver app: sign up, add a vehicle, go online, stream positions over
/v1/ws/driver while moving, answer offers, drive the trip through its states, rate.

One app = three coroutines: the socket (frames in), the motion loop (positions out) and a
worker that makes the HTTP calls one at a time, fed by a queue; so a slow call never stops
the positions and the socket never waits for a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rideshare.simulate.city import (
    Car,
    Clock,
    Point,
    distance_m,
    parked,
    random_point,
    report_interval_s,
    step,
)
from rideshare.simulate.client import RETRY_CAP_S, Api, ApiError, LiveSocket, now_ms
from rideshare.simulate.config import SimConfig
from rideshare.simulate.invariants import TERMINAL_STATES
from rideshare.simulate.registry import Registry

__all__ = ["PASSWORD", "SimDriver", "new_phone", "sign_up"]

logger = logging.getLogger(__name__)

PASSWORD = "simulated-phone-1"
VEHICLES = (("Toyota", "Prius"), ("Skoda", "Octavia"), ("Tesla", "Model 3"), ("VW", "Passat"))


def new_phone() -> str:
    """A fresh E.164 number (unique across runs; identities are not part of the seed)."""
    return "+1555" + str(uuid.uuid4().int)[:10]


async def sign_up(api: Api, path: str, *, op: str, body: dict[str, Any]) -> None:
    """Create the account; a 409 after an attempt of unknown outcome is that attempt's
    success (the phone number is this app's own), which the login that follows confirms."""
    try:
        await api.call("POST", path, op=op, body=body)
    except ApiError as exc:
        if not (exc.status == 409 and exc.after_unknown):
            raise
        api.stats.count(f"{op}_done_by_an_earlier_attempt")


# A command's state once it took effect: a 409 after an attempt of unknown outcome is that
# attempt's success when the trip is there (and, for the driver's commands, still ours).
COMMAND_STATES = {
    "accept": "accepted",
    "arrive": "arrived",
    "start": "in_progress",
    "complete": "completed",
}


@dataclass
class Leg:
    """The trip being driven: where to, and what the app does on arrival."""

    trip_id: str
    pickup: Point
    dropoff: Point
    phase: str = "to_pickup"  # to_pickup -> at_pickup -> to_dropoff -> done
    driven_m: float = 0.0
    started_at: float = 0.0  # monotonic, when the rider got in
    accepted_at: float = 0.0  # monotonic, when the driver's accept was answered


class SimDriver:
    def __init__(
        self,
        index: int,
        *,
        cfg: SimConfig,
        api: Api,
        registry: Registry,
        ws_base: str,
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.api = api
        self.stats = api.stats
        self.registry = registry
        self.clock = Clock(cfg.speedup)
        self.rng = random.Random(f"{cfg.seed}:driver:{index}")
        self.ws_base = ws_base
        self.driver_id = ""
        self.token = ""
        self.car = Car(random_point(self.rng, cfg.city), self.rng.uniform(0, 360))
        self.waypoint = random_point(self.rng, cfg.city)
        self.leg: Leg | None = None
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.socket: LiveSocket | None = None
        self.answered: set[str] = set()  # offer ids (a reconnect re-sends a pending offer)
        self.ended: set[str] = set()  # offer ids ended before an answer (offer_ended frames)

    async def setup(self) -> None:
        """Sign up, log in, register a vehicle, go online."""
        phone = new_phone()
        await sign_up(
            self.api,
            "/v1/drivers",
            op="driver_signup",
            body={
                "name": f"Sim Driver {self.index}",
                "phone": phone,
                "password": PASSWORD,
                "license_number": f"SIM-{self.index}",
            },
        )
        tok = await self.api.call(
            "POST",
            "/v1/auth/token",
            op="token",
            body={"phone": phone, "password": PASSWORD, "role": "driver"},
        )
        self.driver_id, self.token = tok["user_id"], tok["access_token"]
        make, model = self.rng.choice(VEHICLES)
        plate = f"SIM-{uuid.uuid4().hex[:8].upper()}"  # one plate for every attempt
        try:
            await self.api.call(
                "POST",
                "/v1/drivers/me/vehicles",
                op="add_vehicle",
                token=self.token,
                body={
                    "make": make,
                    "model": model,
                    "plate": plate,
                    "seats": 4,
                    "vehicle_class": "standard",
                },
            )
        except ApiError as exc:
            if not (exc.status == 409 and exc.after_unknown):
                raise
            me = await self.api.call("GET", "/v1/drivers/me", op="get_me", token=self.token)
            if plate not in {v.get("plate") for v in me.get("vehicles", ())}:
                raise
            self.stats.count("add_vehicle_done_by_an_earlier_attempt")
        self.socket = LiveSocket(
            f"{self.ws_base}/v1/ws/driver",
            token=self.token,
            on_frame=self._on_frame,
            on_connect=lambda: None,
            stats=self.stats,
            silence_s=self.cfg.ws_silence_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Drive until ``stop``: online, positions, offers, trips; offline at the end."""
        assert self.socket is not None, "setup() first"
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.socket.run(stop))
            await self._send_first_position(stop)
            if not await self._go_online(stop):
                return
            self.registry.online.add(self.driver_id)
            self.stats.count("drivers_online")
            tg.create_task(self._motion(stop))
            tg.create_task(self._worker(stop))
            await stop.wait()
        self.registry.online.discard(self.driver_id)
        if self.leg is None:  # on a trip the app stays online (the service refuses anyway)
            with contextlib.suppress(ApiError):
                # One retry at most: the run is ending, and the system may be stopping too.
                await self.api.call(
                    "POST", "/v1/drivers/me/offline", op="offline", token=self.token, retries=1
                )

    async def _go_online(self, stop: asyncio.Event) -> bool:
        """Go online, trying again (as an app's "go online" button does) until ``stop``."""
        while not stop.is_set():
            try:
                await self.api.call("POST", "/v1/drivers/me/online", op="online", token=self.token)
            except ApiError:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_CAP_S):
                        await stop.wait()
                continue
            return True
        return False

    async def _send_first_position(self, stop: asyncio.Event) -> None:
        """Be on the map before going online, as an app that starts its GPS first."""
        assert self.socket is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.http_timeout_s):
                await self.socket.connected.wait()
        await self._report(parked(self.car))

    # -- frames in -------------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "offer":
            self.registry.offered(str(frame.get("trip_id")), time.monotonic())
            self.stats.count("offers_received")
            self.inbox.put_nowait(("offer", frame))
        elif kind == "trip" and isinstance(frame.get("trip"), dict):
            self.registry.update(frame["trip"])
            self.inbox.put_nowait(("trip", frame["trip"]))
        elif kind == "offer_ended":
            self.stats.count(f"offers_ended_{frame.get('reason')}")
            self.ended.add(str(frame.get("offer_id")))
        elif kind == "ping":
            self.stats.count("pings")

    # -- positions out ---------------------------------------------------------------------

    async def _report(self, car: Car) -> None:
        assert self.socket is not None
        sent = await self.socket.send(
            {
                "type": "position",
                "lat": car.position.lat,
                "lng": car.position.lng,
                "heading": round(car.heading % 360.0, 2) % 360.0,
                "speed_mps": round(car.speed_mps, 2),
                "accuracy_m": 5.0,
                "ts_ms": now_ms(),
            }
        )
        if sent:
            self.stats.count("positions_sent")
            self.stats.tick("positions", time.monotonic())
        else:
            self.stats.count("positions_not_sent")

    async def _motion(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    report_interval_s(self.rng, self.clock, min_wall_s=self.cfg.min_report_s)
                ):
                    await stop.wait()
            now = time.monotonic()
            dt = self.clock.sim(now - last)
            last = now
            await self._report(self._advance(dt))

    def _advance(self, dt_s: float) -> Car:
        """Move for ``dt_s`` simulated seconds; returns the car as its app reports it."""
        leg = self.leg
        if leg is None:
            self.car, arrived, _ = step(self.car, self.waypoint, dt_s, self.rng)
            if arrived:
                self.waypoint = random_point(self.rng, self.cfg.city)
            return self.car
        if leg.phase == "to_pickup":
            self.car, arrived, _ = step(self.car, leg.pickup, dt_s, self.rng)
            if arrived:
                leg.phase = "at_pickup"
                self.inbox.put_nowait(("at_pickup", {"trip_id": leg.trip_id}))
            return self.car
        if leg.phase == "to_dropoff":
            self.car, arrived, moved = step(self.car, leg.dropoff, dt_s, self.rng)
            leg.driven_m += moved
            if arrived:
                leg.phase = "done"
                self.inbox.put_nowait(("at_dropoff", {"trip_id": leg.trip_id}))
            return self.car
        return parked(self.car)

    # -- HTTP, one call at a time ------------------------------------------------------------

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(1.0):
                    kind, data = await self.inbox.get()
            except TimeoutError:
                continue
            try:
                await self._handle(kind, data, stop)
            except ApiError:
                pass  # counted by Api; the app carries on with what it knows
            except Exception as exc:  # an app bug: counted, and the app carries on
                logger.debug("driver %s: %s failed", self.index, kind, exc_info=True)
                self.stats.crashes[f"driver {kind} {type(exc).__name__}"] += 1

    async def _handle(self, kind: str, data: dict[str, Any], stop: asyncio.Event) -> None:
        leg = self.leg
        if kind == "offer":
            await self._answer_offer(data, stop)
        elif kind == "trip":
            if leg is not None and data.get("id") == leg.trip_id:
                if data.get("state") in TERMINAL_STATES or data.get("driver_id") != self.driver_id:
                    self.stats.count(f"driver_saw_trip_{data.get('state')}")
                    self._drop_leg()
        elif leg is not None and data.get("trip_id") == leg.trip_id:
            if kind == "at_pickup":
                await self._pick_up(leg, stop)
            elif kind == "at_dropoff":
                await self._drop_off(leg)

    async def _answer_offer(self, offer: dict[str, Any], stop: asyncio.Event) -> None:
        trip_id = str(offer["trip_id"])
        offer_id = str(offer["offer_id"])
        if offer_id in self.answered:
            return
        self.answered.add(offer_id)
        body = {"offer_id": offer_id}
        if self.leg is not None:
            # Dispatch should never offer a driver on a trip; an app declines anyway.
            self.stats.count("offers_while_busy")
            await self.api.trip(trip_id, "decline", token=self.token, body=body)
            return
        think = min(self.clock.wall(self.rng.uniform(2.0, 8.0)), self.cfg.think_max_s)
        accept = self.rng.random() < self.cfg.accept_prob
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(think):
                await stop.wait()
        if stop.is_set():
            return
        if offer_id in self.ended:
            # Taken by another driver of a parallel batch (or cancelled) while thinking.
            self.stats.count("offers_ended_before_an_answer")
            return
        if not accept:
            self.stats.count("declines")
            await self.api.trip(trip_id, "decline", token=self.token, body=body)
            return
        try:
            trip = await self.api.trip(trip_id, "accept", token=self.token, body=body)
        except ApiError as exc:
            if exc.conflict and offer_id in self.ended:
                self.stats.count("accepts_lost_to_another_driver")
                return
            trip = await self._took_effect(exc, trip_id, "accept")
        self.stats.count("accepts")
        self.registry.accepted(trip_id, self.driver_id, time.monotonic())
        self.registry.update(trip)
        p, d = trip["pickup"], trip["dropoff"]
        pickup = Point(p["lat"], p["lng"])
        self.leg = Leg(trip_id, pickup, Point(d["lat"], d["lng"]), accepted_at=time.monotonic())
        self.stats.measures["pickup_distance_m"].add(distance_m(self.car.position, pickup))

    async def _command(self, leg: Leg, command: str, body: dict[str, Any] | None = None) -> bool:
        """One trip command; False (and the trip dropped) when the trip is no longer ours."""
        try:
            trip = await self.api.trip(leg.trip_id, command, token=self.token, body=body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            try:
                trip = await self._took_effect(exc, leg.trip_id, command)
            except ApiError:
                trip = await self.api.trip(leg.trip_id, token=self.token)
                self.registry.update(trip)
                self._drop_leg()
                return False
        self.registry.update(trip)
        return True

    async def _took_effect(self, exc: ApiError, trip_id: str, command: str) -> dict[str, Any]:
        """The trip, when ``exc`` (a 409/404) answered a retry of a ``command`` whose earlier
        attempt succeeded; else ``exc`` again."""
        if not (exc.conflict and exc.after_unknown and command in COMMAND_STATES):
            raise exc
        trip: dict[str, Any] = await self.api.trip(trip_id, token=self.token)
        self.registry.update(trip)
        done = trip.get("state") == COMMAND_STATES[command] or any(
            h.get("to_state") == COMMAND_STATES[command] for h in trip.get("history") or ()
        )
        if not done or trip.get("driver_id") != self.driver_id:
            raise exc
        self.stats.count(f"{command}_done_by_an_earlier_attempt")
        return trip

    async def _pick_up(self, leg: Leg, stop: asyncio.Event) -> None:
        arrived = time.monotonic()
        if not await self._command(leg, "arrive"):
            return
        self.stats.measures["pickup_s"].add(self.clock.sim(arrived - leg.accepted_at))
        if (wait := self.registry.picked_up(leg.trip_id, arrived)) is not None:
            self.stats.measures["rider_wait_s"].add(self.clock.sim(wait))
        boarding = self.clock.wall(self.rng.uniform(20.0, 60.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(boarding):
                await stop.wait()
        if stop.is_set() or self.leg is not leg:
            return
        if not await self._command(leg, "start"):
            return
        leg.started_at = time.monotonic()
        leg.phase = "to_dropoff"

    async def _drop_off(self, leg: Leg) -> None:
        duration = self.clock.sim(time.monotonic() - leg.started_at)
        body = {"distance_m": int(leg.driven_m), "duration_s": int(duration)}
        if not await self._command(leg, "complete", body):
            return
        self.stats.count("trips_completed_by_drivers")
        self._drop_leg()
        stars = self.rng.choice((5, 5, 5, 4, 4, 3))
        await self.api.trip(leg.trip_id, "rating", token=self.token, body={"stars": stars})
        self.stats.count("ratings_by_drivers")

    def _drop_leg(self) -> None:
        if self.leg is not None:
            self.registry.released(self.driver_id, self.leg.trip_id)
        self.leg = None
        self.waypoint = random_point(self.rng, self.cfg.city)
