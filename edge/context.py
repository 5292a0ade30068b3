"""What every route and socket handler of the edge works with, built once per process by
``edge.app.running`` and passed down as ``app.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS

from edge.idempotency import IdempotencyStore
from edge.live import LiveHub
from edge.logins import LoginGuard
from edge.positions import PositionBatcher
from edge.ratelimit import RateLimiter
from edge.settings import EdgeSettings
from edge.upstreams import (
    DriverStub,
    LocationStub,
    NotificationStub,
    RiderStub,
    TripStub,
    Upstreams,
)
from edge.usercap import UserSockets
from rideshare.redis_client import RedisClient

__all__ = ["EdgeContext"]


@dataclass
class EdgeContext:
    """Everything a route or socket handler needs. The upstream services are typed clients,
    each behind its own breaker: ``await ctx.trip.GetTrip(request)``."""

    settings: EdgeSettings
    upstreams: Upstreams
    redis: RedisClient
    nc: NATS
    limiter: RateLimiter
    logins: LoginGuard
    idempotency: IdempotencyStore
    hub: LiveHub
    positions: PositionBatcher
    user_sockets: UserSockets

    @property
    def rider(self) -> RiderStub:
        return self.upstreams.rider

    @property
    def driver(self) -> DriverStub:
        return self.upstreams.driver

    @property
    def trip(self) -> TripStub:
        return self.upstreams.trip

    @property
    def location(self) -> LocationStub:
        return self.upstreams.location

    @property
    def notification(self) -> NotificationStub:
        return self.upstreams.notification
