"""Limits on logins and signups, checked at the edge before a service spends a password hash.

A password hash costs tens of milliseconds of CPU on purpose, and a service computes only a
few at once (rideshare/credentials.py). Without limits in front, one client's flood of wrong
guesses fills that queue, and everybody else's logins wait behind it or are refused. So
before a login reaches the rider or driver service, in this order:

1. the client's address has a login left in its bucket (``logins_per_min_per_ip``): first,
   so that a client spraying guesses over many phone numbers is stopped by its own budget,
   without draining the numbers' buckets of their owners;
2. the phone number has a login left in its bucket (``logins_per_min_per_phone``): guesses
   at one account from many addresses, and a burst of parallel guesses that no failure has
   been counted for yet;
3. the phone number is not locked out. ``lockout_failures`` failed logins in a row lock it
   for ``lockout_s``; every further failure locks it again for twice as long, up to
   ``lockout_max_s``; a successful login clears the count. Failures are what the service
   answered (UNAUTHENTICATED, 401); an unknown phone number counts exactly like a known one,
   so neither the limits nor the lockout say which numbers have an account.

Refusals are 429 with Retry-After and the usual JSON error body. Signups have a bucket per
address and one per phone number (``signups_*``), strict because a signup with a taken
number says so (README: "Logins and signups").

Buckets are the edge's rate-limit buckets (edge/ratelimit.py); failure counts and locks are
Redis keys with an expiry, so every edge copy shares them. Like the rate limiter, this fails
open while Redis is unreachable (counted in ``edge_rate_limiter_failed_open_total``): the
services' bounded KDF queues still hold. Each lockout is logged (audit), and so is each
refusal, at most once per account or address every ``log_every_s``; never a password, and
phone numbers only masked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from redis.exceptions import RedisError

from edge.errors import ApiError
from edge.metrics import LOGIN_LOCKOUTS, LOGIN_REFUSED, RATE_LIMITER_FAILED_OPEN
from edge.ratelimit import Bucket, RateLimiter, retry_after_header
from edge.settings import LoginLimits
from rideshare.redis_client import RedisClient

__all__ = ["LoginGuard", "Role", "masked_phone"]

logger = logging.getLogger(__name__)

Role = Literal["rider", "driver"]
T = TypeVar("T")

# KEYS: failure count, lock. ARGV: failures before a lock, window ms, first lock ms, max lock ms.
# Returns {failures so far, lock set now in ms (0: none)}. The count outlives a lock by the
# window, so the next failure after a lock ends locks again, for twice as long.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
local threshold = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lock = 0
if n >= threshold then
  lock = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (n - threshold))
  lock = math.floor(lock)
  redis.call('SET', KEYS[2], '1', 'PX', lock)
end
redis.call('PEXPIRE', KEYS[1], window + lock)
return {n, lock}
"""


def masked_phone(phone: str) -> str:
    """``+49*******5678``: enough for an operator to match a complaint, not a list of numbers."""
    if len(phone) <= 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


class LoginGuard:
    """The edge's door for logins and signups: :meth:`admit_login` before the call,
    :meth:`login_failed` / :meth:`login_succeeded` after it, :meth:`admit_signup` before a
    signup. ``admit_*`` raise a 429 :class:`ApiError` when the attempt must not go on."""

    def __init__(
        self,
        redis: RedisClient,
        limiter: RateLimiter,
        limits: LoginLimits,
        *,
        prefix: str = "edge:login:",
        retry_s: float = 1.0,
        log_every_s: float = 10.0,
    ) -> None:
        self._redis = redis
        self._limiter = limiter
        self._limits = limits
        self._prefix = prefix
        self._failed = redis.register_script(_FAILED)
        self._retry_s = retry_s
        self._log_every_s = log_every_s
        self._open_until = 0.0
        self._logged: dict[str, float] = {}

    # -- logins -------------------------------------------------------------------------------

    async def admit_login(self, role: Role, phone: str, client: str) -> None:
        """Let a login go on to the service, or raise 429 (rate limit or lockout)."""
        lim = self._limits
        await self._take(
            "login",
            "client",
            Bucket(f"login:ip:{client}", lim.logins_per_min_per_ip / 60, lim.login_burst_per_ip),
            message="too many login attempts from this address; retry later",
            who=f"client {client}",
        )
        await self._take(
            "login",
            "phone",
            Bucket(
                f"login:phone:{role}:{phone}",
                lim.logins_per_min_per_phone / 60,
                lim.login_burst_per_phone,
            ),
            message="too many login attempts for this phone number; retry later",
            who=f"{role} {masked_phone(phone)} (client {client})",
        )
        locked_ms = await self._redis_or(0, lambda: self._redis.pttl(self._lock_key(role, phone)))
        if locked_ms > 0:
            self._refuse(
                "login",
                "locked",
                locked_ms / 1000,
                message="too many failed logins for this phone number; it is locked for now",
                who=f"{role} {masked_phone(phone)} (client {client})",
            )

    async def login_failed(self, role: Role, phone: str, client: str) -> None:
        """Count a failed login (the service said the password is wrong); lock the phone
        number once there have been too many in a row."""
        lim = self._limits
        keys = [self._failures_key(role, phone), self._lock_key(role, phone)]
        args = [
            lim.lockout_failures,
            round(lim.failure_window_s * 1000),
            round(lim.lockout_s * 1000),
            round(lim.lockout_max_s * 1000),
        ]
        reply = await self._redis_or(None, lambda: self._failed(keys=keys, args=args))
        if reply is None:
            return
        failures, lock_ms = int(reply[0]), int(reply[1])
        if lock_ms > 0:
            LOGIN_LOCKOUTS.inc()
            logger.warning(
                "login lockout: %s %s locked for %d s after %d failed logins in a row "
                "(the last from %s)",
                role,
                masked_phone(phone),
                math.ceil(lock_ms / 1000),
                failures,
                client,
            )

    async def login_succeeded(self, role: Role, phone: str) -> None:
        """A right password clears the phone number's failures (and a lock that a failure
        racing this login may have set)."""
        keys = (self._failures_key(role, phone), self._lock_key(role, phone))
        await self._redis_or(0, lambda: self._redis.delete(*keys))

    # -- signups ------------------------------------------------------------------------------

    async def admit_signup(self, role: Role, phone: str, client: str) -> None:
        """Let a signup go on to the service, or raise 429."""
        lim = self._limits
        await self._take(
            "signup",
            "client",
            Bucket(f"signup:ip:{client}", lim.signups_per_min_per_ip / 60, lim.signup_burst_per_ip),
            message="too many signups from this address; retry later",
            who=f"client {client}",
        )
        await self._take(
            "signup",
            "phone",
            Bucket(
                f"signup:phone:{role}:{phone}",
                lim.signups_per_min_per_phone / 60,
                lim.signup_burst_per_phone,
            ),
            message="too many signups with this phone number; retry later",
            who=f"{role} {masked_phone(phone)} (client {client})",
        )

    # -- helpers ------------------------------------------------------------------------------

    def _failures_key(self, role: Role, phone: str) -> str:
        # One hash tag per (role, phone): the failure script's two keys share a cluster slot.
        return f"{self._prefix}failures:{{{role}:{phone}}}"

    def _lock_key(self, role: Role, phone: str) -> str:
        return f"{self._prefix}lock:{{{role}:{phone}}}"

    async def _take(
        self, kind: str, reason: str, bucket: Bucket, *, message: str, who: str
    ) -> None:
        retry_s = await self._limiter.take([bucket])
        if retry_s:
            self._refuse(kind, reason, retry_s, message=message, who=who)

    def _refuse(self, kind: str, reason: str, retry_s: float, *, message: str, who: str) -> None:
        LOGIN_REFUSED.labels(kind, reason).inc()
        retry_after = retry_after_header(retry_s)
        if self._first_in_a_while(f"{kind}:{reason}:{who}"):
            logger.warning(
                "%s refused (%s limit): %s, retry after %s s", kind, reason, who, retry_after
            )
        raise ApiError(429, "rate_limited", message, headers={"Retry-After": retry_after})

    def _first_in_a_while(self, key: str) -> bool:
        """Whether a refusal of ``key`` was not logged in the last ``log_every_s``: a flood
        gets a line per client and account, not one per request."""
        now = time.monotonic()
        if now - self._logged.get(key, -math.inf) < self._log_every_s:
            return False
        if len(self._logged) >= 10_000:  # bounded, whatever a flood's spread
            self._logged.clear()
        self._logged[key] = now
        return True

    async def _redis_or(self, default: T, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, or ``default`` while Redis fails (fail open, as the rate limiter
        does; not asked again for ``retry_s`` after an error, so a hung Redis does not add its
        timeout to every login)."""
        now = time.monotonic()
        if now < self._open_until:
            RATE_LIMITER_FAILED_OPEN.inc()
            return default
        try:
            return await call()
        except RedisError as exc:
            RATE_LIMITER_FAILED_OPEN.inc()
            self._open_until = now + self._retry_s
            if self._first_in_a_while("redis"):
                logger.warning("login limits unavailable, letting logins through: %r", exc)
            return default
