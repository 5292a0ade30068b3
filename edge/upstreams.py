"""One typed client per upstream service: its stub, whose every unary call goes through that
service's small circuit breaker and deadlines.

Deadlines fit the work: a call gets ``timeout_s`` unless :data:`EXPENSIVE` names its method
(signups and logins, which wait their turn for the password KDF), which get
``expensive_timeout_s``. :data:`EXPENSIVE` is the one list of expensive methods.

The breaker opens on an upstream that is dead or failing, never on one that is merely slow
or busy (:func:`outcome_of` is the whole policy):

- BROKEN: UNAVAILABLE (nobody answers, or it says it cannot serve), INTERNAL / UNKNOWN /
  DATA_LOSS (it answers, but fails), and DEADLINE_EXCEEDED of a cheap call (a read that
  takes longer than its generous deadline means a hung process).
- HEALTHY: any answer that shows the service working, including errors about the request
  (NOT_FOUND, INVALID_ARGUMENT ...) and RESOURCE_EXHAUSTED (alive, and shedding work it
  cannot do now: the caller is told to retry, the other calls still work).
- NEUTRAL: DEADLINE_EXCEEDED of an expensive call (slow work on a busy machine says nothing
  about the reads next to it) and CANCELLED (the caller gave up).

After ``failures`` BROKEN outcomes in a row the breaker opens and calls fail at once with 503
and Retry-After for ``reset_s``; then one probe call is let through (half-open) and its
outcome closes or reopens the breaker.

The expensive methods of a service have a breaker of their own, beside the one of its other
calls: nothing a login flood does to logins (however slow, refused or failing they get) opens
the breaker that ``GET /v1/me`` or a trip's reads go through, and a login can never be the
half-open probe that every other call waits for.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.errors import ApiError, from_grpc
from edge.settings import UPSTREAM_NAMES
from protos.driver.v1 import driver_pb2_grpc
from protos.location.v1 import location_pb2_grpc
from protos.notification.v1 import notification_pb2_grpc
from protos.rider.v1 import rider_pb2_grpc
from protos.trip.v1 import trip_pb2_grpc
from rideshare.grpc_client import make_channel
from rideshare.identity import TokenSigner

__all__ = [
    "EXPENSIVE",
    "CircuitBreaker",
    "DriverStub",
    "LocationStub",
    "NotificationStub",
    "Outcome",
    "RiderStub",
    "TripStub",
    "Upstream",
    "Upstreams",
    "outcome_of",
]

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

RiderStub: TypeAlias = "rider_pb2_grpc.RiderServiceAsyncStub"
DriverStub: TypeAlias = "driver_pb2_grpc.DriverServiceAsyncStub"
TripStub: TypeAlias = "trip_pb2_grpc.TripServiceAsyncStub"
LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"
NotificationStub: TypeAlias = "notification_pb2_grpc.NotificationServiceAsyncStub"

# Queries are safe to retry on UNAVAILABLE (rideshare.grpc_client); commands are not.
_IDEMPOTENT = {
    "rider": (
        "rideshare.rider.v1.RiderService/GetRider",
        "rideshare.rider.v1.RiderService/ListTrips",
    ),
    "driver": ("rideshare.driver.v1.DriverService/GetDriver",),
    "trip": (
        "rideshare.trip.v1.TripService/GetTrip",
        "rideshare.trip.v1.TripService/ListTrips",
        "rideshare.trip.v1.TripService/EstimateFare",
        "rideshare.trip.v1.TripService/ExplainDispatch",
    ),
    "location": (
        "rideshare.location.v1.LocationService/GetPosition",
        "rideshare.location.v1.LocationService/DriversInArea",
        "rideshare.location.v1.LocationService/ReportPosition",
    ),
    "notification": ("rideshare.notification.v1.NotificationService/ListNotifications",),
}
# Methods that cost real CPU by design (the password KDF) and may queue for it: a longer
# deadline, and their slowness never counts against the upstream's breaker.
EXPENSIVE: Mapping[str, tuple[str, ...]] = {
    "rider": (
        "rideshare.rider.v1.RiderService/CreateRider",
        "rideshare.rider.v1.RiderService/Authenticate",
    ),
    "driver": (
        "rideshare.driver.v1.DriverService/CreateDriver",
        "rideshare.driver.v1.DriverService/Authenticate",
    ),
}


class Outcome(enum.Enum):
    """What one finished call says about the upstream's health."""

    HEALTHY = "healthy"
    BROKEN = "broken"
    NEUTRAL = "neutral"


_BROKEN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def outcome_of(code: grpc.StatusCode, *, expensive: bool) -> Outcome:
    """The breaker's policy: how a call that ended with ``code`` (OK for a success) counts."""
    if code in _BROKEN:
        return Outcome.BROKEN
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.NEUTRAL if expensive else Outcome.BROKEN
    if code is grpc.StatusCode.CANCELLED:
        return Outcome.NEUTRAL
    return Outcome.HEALTHY


@dataclass
class CircuitBreaker:
    """Closed -> (``failures`` consecutive failures) -> open for ``reset_s`` -> half-open."""

    failures: int = 5
    reset_s: float = 5.0
    _consecutive: int = 0
    _opened_at: float | None = None
    _probing: bool = False
    clock: Any = field(default=time.monotonic, repr=False)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (one probe at a time while half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self.clock()

    def release(self) -> None:
        """A call ended without telling whether the upstream is healthy (e.g. cancelled)."""
        self._probing = False


class Upstream:
    """A channel to one service and its breaker: :attr:`Upstreams` hands out the service's
    stub built over :class:`_GuardedChannel`, so every unary call of that stub goes through
    this breaker and no other."""

    def __init__(
        self,
        name: str,
        target: str,
        *,
        timeout_s: float,
        expensive_timeout_s: float,
        failures: int,
        reset_s: float,
        signer: TokenSigner | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.channel = make_channel(
            target,
            idempotent_methods=_IDEMPOTENT.get(name, ()),
            default_timeout_s=timeout_s,
            method_timeouts={m: expensive_timeout_s for m in EXPENSIVE.get(name, ())},
            signer=signer,
        )
        self.breaker = CircuitBreaker(failures=failures, reset_s=reset_s)
        # signups and logins (EXPENSIVE): their own, so they cannot open the one above
        self.expensive_breaker = CircuitBreaker(failures=failures, reset_s=reset_s)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def check(self, *, expensive: bool = False) -> None:
        """Raises 503 at once while the breaker of such calls is open."""
        breaker = self.expensive_breaker if expensive else self.breaker
        if not breaker.allow():
            raise ApiError(
                503,
                "unavailable",
                f"{self.name} service unavailable",
                headers={"Retry-After": str(max(1, round(breaker.reset_s)))},
            )

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        expensive: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, not a wait
    ) -> Resp:
        """``method(request)`` through its breaker; a gRPC error becomes an ApiError."""
        breaker = self.expensive_breaker if expensive else self.breaker
        self.check(expensive=expensive)
        try:
            response = await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            outcome = outcome_of(exc.code(), expensive=expensive)
            self._count(breaker, outcome)
            if outcome is Outcome.BROKEN:
                logger.warning(
                    "%s call failed: %s %s", self.name, exc.code().name, (exc.details() or "")[:200]
                )
            raise from_grpc(exc, self.name) from None
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return response

    @staticmethod
    def _count(breaker: CircuitBreaker, outcome: Outcome) -> None:
        if outcome is Outcome.BROKEN:
            breaker.failure()
        elif outcome is Outcome.HEALTHY:
            breaker.success()
        else:
            breaker.release()

    async def healthy(self, *, timeout_s: float = 1.0) -> bool:
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.channel.close(None)


class _GuardedUnary:
    """One unary method of a stub, called through its upstream's breaker: awaiting
    ``stub.GetTrip(request)`` gives the reply or raises an ApiError."""

    __slots__ = ("_expensive", "_method", "_upstream")

    def __init__(
        self,
        upstream: Upstream,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
        *,
        expensive: bool,
    ) -> None:
        self._upstream = upstream
        self._method = method
        self._expensive = expensive

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
    ) -> Awaitable[Any]:
        return self._upstream.call(
            self._method, request, expensive=self._expensive, timeout=timeout
        )


class _GuardedChannel:
    """What a generated stub asks of its channel, answered by the upstream's real channel:
    unary methods come back wrapped in the upstream's breaker (:class:`_GuardedUnary`), so a
    stub cannot be called around it or through another service's breaker. Streams are the
    channel's own: they are long-lived, and their ends are handled where they are used."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._expensive = frozenset("/" + m for m in EXPENSIVE.get(upstream.name, ()))

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _GuardedUnary:
        inner = self._upstream.channel.unary_unary(method, *args, **kwargs)
        return _GuardedUnary(self._upstream, inner, expensive=method in self._expensive)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._upstream.channel.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._upstream.channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._upstream.channel.stream_stream(method, *args, **kwargs)


Stub = TypeVar("Stub")


class Upstreams:
    """The edge's five clients, each a typed stub whose unary calls go through that service's
    breaker and deadlines: ``await ups.trip.GetTrip(request)``. Every service is always
    there (a service that is down answers 503 through its breaker, like any outage).

    Every call is signed as ``signer`` (the edge) and acts for the app user in
    :data:`rideshare.identity.acting_user_var`, which the route's auth dependency sets
    (edge/deps.py); a call outside any request (the live hub) acts for no user."""

    def __init__(
        self,
        targets: Mapping[str, str],
        *,
        timeout_s: float = 3.0,
        expensive_timeout_s: float = 10.0,
        failures: int = 5,
        reset_s: float = 5.0,
        signer: TokenSigner | None = None,
    ) -> None:
        missing = [n for n in UPSTREAM_NAMES if n not in targets]
        if missing:
            raise ValueError(f"no address for the upstream services {', '.join(missing)}")
        self.by_name: dict[str, Upstream] = {}

        def client(name: str, stub: Callable[[grpc.aio.Channel], Stub]) -> Stub:
            upstream = self.by_name[name] = Upstream(
                name,
                targets[name],
                timeout_s=timeout_s,
                expensive_timeout_s=expensive_timeout_s,
                failures=failures,
                reset_s=reset_s,
                signer=signer,
            )
            # The stub only calls the channel's four method factories (see _GuardedChannel).
            return stub(cast(grpc.aio.Channel, _GuardedChannel(upstream)))

        self.rider: RiderStub = client("rider", rider_pb2_grpc.RiderServiceStub)
        self.driver: DriverStub = client("driver", driver_pb2_grpc.DriverServiceStub)
        self.trip: TripStub = client("trip", trip_pb2_grpc.TripServiceStub)
        self.location: LocationStub = client("location", location_pb2_grpc.LocationServiceStub)
        self.notification: NotificationStub = client(
            "notification", notification_pb2_grpc.NotificationServiceStub
        )

    async def health(self) -> dict[str, dict[str, Any]]:
        """Per upstream: whether it answers SERVING and its breaker state."""
        names = list(self.by_name)
        results = await asyncio.gather(*(self.by_name[n].healthy() for n in names))
        return {
            n: {
                "serving": ok,
                "breaker": self.by_name[n].breaker.state,
                "expensive_breaker": self.by_name[n].expensive_breaker.state,
                "target": self.by_name[n].target,
            }
            for n, ok in zip(names, results, strict=True)
        }

    async def close(self) -> None:
        await asyncio.gather(*(u.close() for u in self.by_name.values()))
