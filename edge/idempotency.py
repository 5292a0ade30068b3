"""``Idempotency-Key`` for POSTs that create: the same key with the same body replays the
first response; the same key with another body is 422.

Keys live in Redis under the caller's subject, so two users cannot collide. The first request
claims the key (SET NX with a short lease) and stores its response when done; a concurrent
duplicate waits briefly for that response instead of creating a second trip. Server-side
failures (5xx) release the key so that the client's retry gets a real second attempt.

Without Redis there is no way to tell a retry from a new request, so a request with a key
answers 503 (Retry-After) while Redis is unreachable, rather than risk a second trip. If
Redis goes away after the trip was created, the response is still returned (and not stored):
the client has its answer and no reason to retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from edge.errors import ApiError
from rideshare.redis_client import RedisClient

__all__ = ["IdempotencyStore", "StoredResponse", "fingerprint"]

logger = logging.getLogger(__name__)

MAX_KEY_LEN = 200
_PENDING = "pending"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any
    replayed: bool = False


def fingerprint(body: Any) -> str:
    """A hash of the request body that ignores key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    def __init__(
        self,
        redis: RedisClient,
        *,
        ttl_s: int = 24 * 3600,
        lease_s: float = 30.0,
        wait_s: float = 5.0,
        prefix: str = "edge:idem:",
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._lease_ms = int(lease_s * 1000)
        self._wait_s = wait_s
        self._prefix = prefix

    async def run(
        self,
        *,
        scope: str,
        key: str,
        body: Any,
        create: Callable[[], Awaitable[StoredResponse]],
    ) -> StoredResponse:
        """``create()`` once per (scope, key); later calls get its stored response."""
        if not key or len(key) > MAX_KEY_LEN or not key.isprintable():
            raise ApiError(
                422, "invalid_argument", f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable chars"
            )
        redis_key = f"{self._prefix}{scope}:{key}"
        fp = fingerprint(body)
        claim = json.dumps({"state": _PENDING, "fp": fp})
        if await self._redis.set(redis_key, claim, nx=True, px=self._lease_ms):
            return await self._create(redis_key, fp, create)
        stored = await self._await_result(redis_key, fp)
        if stored is None:  # the first attempt failed and released the key: try it ourselves
            if await self._redis.set(redis_key, claim, nx=True, px=self._lease_ms):
                return await self._create(redis_key, fp, create)
            stored = await self._await_result(redis_key, fp)
        if stored is None:
            raise ApiError(409, "conflict", "a request with this Idempotency-Key is in progress")
        return stored

    async def _create(
        self, redis_key: str, fp: str, create: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        try:
            response = await create()
        except ApiError as exc:
            if exc.status >= 500:
                await self._release(redis_key)
                raise
            record = {
                "status": exc.status,
                "body": {"error": {"code": exc.code, "message": exc.message}},
            }
            await self._store(redis_key, fp, record)
            raise
        except BaseException:
            await self._release(redis_key)
            raise
        await self._store(redis_key, fp, {"status": response.status, "body": response.body})
        return response

    async def _store(self, redis_key: str, fp: str, record: dict[str, Any]) -> None:
        """Keep the outcome for replays; if Redis is gone now, the caller still gets it (a
        503 instead would invite a retry, and with it a second trip)."""
        value = json.dumps({"state": "done", "fp": fp, **record}, default=str)
        try:
            await self._redis.set(redis_key, value, ex=self._ttl_s)
        except RedisError as exc:
            logger.warning("idempotency: could not store the response of %s: %r", redis_key, exc)

    async def _release(self, redis_key: str) -> None:
        """Free the key for a retry; if Redis is gone, its lease runs out by itself."""
        try:
            await self._redis.delete(redis_key)
        except RedisError as exc:
            logger.warning("idempotency: could not release %s: %r", redis_key, exc)

    async def _await_result(self, redis_key: str, fp: str) -> StoredResponse | None:
        """The stored response for the key; None when the key was released."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while True:
            raw = await self._redis.get(redis_key)
            if raw is None:
                return None
            record = json.loads(raw)
            if record["fp"] != fp:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body",
                )
            if record["state"] != _PENDING:
                status = int(record["status"])
                if status >= 400:
                    err = record["body"]["error"]
                    raise ApiError(status, err["code"], err["message"])
                return StoredResponse(status, record["body"], replayed=True)
            if loop.time() >= deadline:
                raise ApiError(
                    409, "conflict", "a request with this Idempotency-Key is in progress"
                )
            await asyncio.sleep(0.05)
