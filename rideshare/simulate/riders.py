"""A simulated rider app: sign up, then at Poisson times ask for a fare estimate, book it
(POST /v1/trips with an Idempotency-Key), watch the trip and the driver on /v1/ws/rider,
sometimes cancel, and rate the driver after the ride."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from typing import Any

from rideshare.simulate.cards import tokenize_card
from rideshare.simulate.city import Clock, poisson_gaps, random_trip
from rideshare.simulate.client import Api, ApiError, LiveSocket, now_ms
from rideshare.simulate.config import SimConfig
from rideshare.simulate.drivers import PASSWORD, new_phone, sign_up
from rideshare.simulate.invariants import TERMINAL_STATES
from rideshare.simulate.registry import Registry, TripRecord

__all__ = ["SimRider"]

CANCELLABLE = frozenset({"requested", "dispatching", "accepted", "arrived"})


class SimRider:
    def __init__(
        self, index: int, *, cfg: SimConfig, api: Api, registry: Registry, ws_base: str
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.api = api
        self.stats = api.stats
        self.registry = registry
        self.clock = Clock(cfg.speedup)
        self.rng = random.Random(f"{cfg.seed}:rider:{index}")
        self.gaps = poisson_gaps(self.rng, cfg.rate / max(cfg.riders, 1))
        self.ws_base = ws_base
        self.rider_id = ""
        self.token = ""
        self.socket: LiveSocket | None = None
        self.trip_id: str | None = None
        self.state = ""
        self.version = -1
        self.changed = asyncio.Event()
        # driver id -> newest position ts seen on this connection (first one is the snapshot)
        self._last_ts: dict[str, int] = {}

    async def setup(self) -> None:
        phone = new_phone()
        await sign_up(
            self.api,
            "/v1/riders",
            op="rider_signup",
            body={"name": f"Sim Rider {self.index}", "phone": phone, "password": PASSWORD},
        )
        tok = await self.api.call(
            "POST",
            "/v1/auth/token",
            op="token",
            body={"phone": phone, "password": PASSWORD, "role": "rider"},
        )
        self.rider_id, self.token = tok["user_id"], tok["access_token"]
        if self.cfg.stripe_api_base:
            method_id = await tokenize_card(self.cfg.stripe_api_base)
            await self.api.call(
                "POST",
                "/v1/me/payment-methods",
                op="add_card",
                token=self.token,
                body={"payment_method_id": method_id},
            )
        self.socket = LiveSocket(
            f"{self.ws_base}/v1/ws/rider",
            token=self.token,
            on_frame=self._on_frame,
            on_connect=self._last_ts.clear,
            stats=self.stats,
            silence_s=self.cfg.ws_silence_s,
        )

    async def run(self, no_more_requests: asyncio.Event, stop: asyncio.Event) -> None:
        """Request rides until ``no_more_requests``; follow the last one until ``stop``."""
        assert self.socket is not None, "setup() first"
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.socket.run(stop))
            while not no_more_requests.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next(self.gaps)):
                        await no_more_requests.wait()
                if no_more_requests.is_set():
                    break
                try:
                    await self._ride(stop)
                except ApiError:
                    pass  # counted by Api; this rider tries again at its next time
            await stop.wait()

    # -- frames in -------------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "trip" and isinstance(frame.get("trip"), dict):
            self._saw_trip(frame["trip"])
        elif kind == "driver_position":
            self._saw_position(frame)
        elif kind == "ping":
            self.stats.count("pings")

    def _saw_trip(self, trip: dict[str, Any]) -> None:
        self.registry.update(trip)
        if trip.get("id") != self.trip_id:
            return
        version = int(trip.get("version") or 0)
        if version >= self.version:
            self.version = version
            self.state = str(trip.get("state"))
            self.changed.set()

    def _saw_position(self, frame: dict[str, Any]) -> None:
        driver = str(frame.get("driver_id"))
        self.registry.seen_positions[self.rider_id].add(driver)
        self.stats.count("positions_received")
        ts = int(frame.get("ts_ms") or 0)
        previous = self._last_ts.get(driver)
        self._last_ts[driver] = max(ts, previous or 0)
        # The first position after (re)connecting or after the accept is the last known one
        # (a snapshot, possibly old): only later ones measure delivery.
        if previous is not None and ts > previous:
            self.stats.latencies["position_delivery"].add(max(now_ms() - ts, 0))

    # -- one ride --------------------------------------------------------------------------

    async def _ride(self, stop: asyncio.Event) -> None:
        pickup, dropoff = random_trip(self.rng, self.cfg.city)
        cancel_after: float | None = None
        if self.rng.random() < self.cfg.cancel_prob:
            # Most riders who cancel do it while waiting: sooner or later, simulated seconds.
            cancel_after = self.clock.wall(self.rng.uniform(5.0, 240.0))
        stars = self.rng.choice((5, 5, 5, 5, 4, 4, 3, 2))
        points = {
            "pickup": {"lat": pickup.lat, "lng": pickup.lng},
            "dropoff": {"lat": dropoff.lat, "lng": dropoff.lng},
        }
        quote = await self.api.call(
            "POST", "/v1/fare-estimates", op="fare_estimate", token=self.token, body=points
        )
        sent = time.monotonic()
        self.stats.count("trips_requested")
        self.stats.tick("requests", sent)
        trip = await self.api.call(
            "POST",
            "/v1/trips",
            op="request_trip",
            token=self.token,
            body={"quote_id": quote["quote_id"], **points},
            # One key for every attempt: a retry gets the trip the first attempt created.
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        self.trip_id, self.version, self.state = trip["id"], -1, ""
        self.registry.requested(
            TripRecord(trip["id"], self.rider_id, self.token, requested_at=sent), trip
        )
        self._saw_trip(trip)
        await self._follow(trip["id"], cancel_after, sent, stop)
        if self.state == "completed" and not stop.is_set():
            await self.api.trip(trip["id"], "rating", token=self.token, body={"stars": stars})
            self.stats.count("ratings_by_riders")
        self.stats.count(f"rides_{self.state or 'unknown'}")

    async def _follow(
        self, trip_id: str, cancel_after: float | None, sent: float, stop: asyncio.Event
    ) -> None:
        """Wait for the trip to end, reading it when the socket stays quiet; cancel on cue."""
        last_news = time.monotonic()
        while self.state not in TERMINAL_STATES and not stop.is_set():
            now = time.monotonic()
            wait = self.cfg.poll_s - (now - last_news)
            if cancel_after is not None:
                wait = min(wait, sent + cancel_after - now)
            self.changed.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, 1.0)):
                        await self.changed.wait()
            if self.changed.is_set():
                last_news = time.monotonic()
                continue
            now = time.monotonic()
            if cancel_after is not None and now >= sent + cancel_after:
                cancel_after = None
                if self.state in CANCELLABLE or not self.state:
                    await self._cancel(trip_id)
            elif now - last_news >= self.cfg.poll_s:
                last_news = now
                trip = await self.api.trip(trip_id, token=self.token)
                self.stats.count("rider_polls")
                self._saw_trip(trip)

    async def _cancel(self, trip_id: str) -> None:
        try:
            body = {"reason": "changed my mind"}
            trip = await self.api.trip(trip_id, "cancel", token=self.token, body=body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            return
        self.stats.count("cancels_by_riders")
        self._saw_trip(trip)
