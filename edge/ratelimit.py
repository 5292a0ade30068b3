"""Token buckets in Redis, shared by every edge copy: per token and per client IP.

One Lua script refills and takes from every bucket of a request atomically, on Redis's clock
(so copies of the edge with skewed clocks agree): a request passes only if every bucket has a
token, and then it takes one from each.

On a Valkey Cluster a script's keys must share one hash slot, and one request's buckets belong
to different things (its IP, its user): every bucket key carries the same hash tag,
``edge:rl:{rl}:<bucket>``, so one cluster node holds all of them. One script call per request
is light work for one node (tens of thousands a second); the atomic all-or-nothing take is
worth more than spreading it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from edge.metrics import RATE_LIMITER_FAILED_OPEN
from rideshare.redis_client import RedisClient

__all__ = ["Bucket", "RateLimiter", "TokenBucket"]

logger = logging.getLogger(__name__)

# KEYS: bucket keys. ARGV: rate_1, burst_1, rate_2, burst_2, ... (tokens per second, capacity).
# Returns {allowed (0/1), retry_after_ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local retry = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  levels[i] = tokens
  if tokens < 1 then
    retry = math.max(retry, math.ceil((1 - tokens) * 1000 / rate))
  end
end
local allowed = 0
if retry == 0 then allowed = 1 end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tokens = levels[i]
  if allowed == 1 then tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return {allowed, retry}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a request: its Redis key, refill rate per second and capacity."""

    key: str
    rate: float
    burst: int


class RateLimiter:
    """Checks and takes from the buckets of a request in one round trip.

    When Redis is down the limiter fails open: requests pass unchecked, counted in
    ``edge_rate_limiter_failed_open_total``, with a warning at most every ``log_every_s``.
    The limiter guards against floods, and an outage of the cache that holds its buckets
    must not turn into an outage of the whole API: routes that cannot work without Redis
    (Idempotency-Key) answer 503 on their own, and the services behind have bounds of
    their own (concurrent RPC limits, bounded queues, breakers). After a failure Redis is
    not asked again for ``retry_s``, so a hung Redis does not add its timeout to every
    request.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "edge:rl:",
        retry_s: float = 1.0,
        log_every_s: float = 10.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_SCRIPT)
        self._retry_s = retry_s
        self._log_every_s = log_every_s
        self._open_until = 0.0
        self._logged_at = -math.inf

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """0.0 when the request may pass, else the seconds to wait before retrying."""
        if not buckets:
            return 0.0
        now = time.monotonic()
        if now < self._open_until:
            RATE_LIMITER_FAILED_OPEN.inc()
            return 0.0
        keys = [f"{self._prefix}{{rl}}:{b.key}" for b in buckets]
        args: list[float | int] = []
        for b in buckets:
            args += [b.rate, b.burst]
        try:
            allowed, retry_ms = await self._script(keys=keys, args=args)
        except RedisError as exc:
            self._fail_open(exc)
            return 0.0
        return 0.0 if int(allowed) == 1 else max(int(retry_ms), 1) / 1000.0

    def _fail_open(self, exc: RedisError) -> None:
        RATE_LIMITER_FAILED_OPEN.inc()
        now = time.monotonic()
        self._open_until = now + self._retry_s
        if now - self._logged_at >= self._log_every_s:
            self._logged_at = now
            logger.warning("rate limiter unavailable, letting requests through: %r", exc)


class TokenBucket:
    """An in-process token bucket (per WebSocket: message rate), on a caller-given clock."""

    __slots__ = ("_burst", "_rate", "_tokens", "_ts")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._ts = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._ts) * self._rate)
        self._ts = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0 for a refused request."""
    return str(max(1, math.ceil(seconds)))
