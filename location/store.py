"""Live positions and the availability index in Redis.

Layout (``<p>`` is the key prefix, ``loc:`` by default):

- ``<p>d:<driver_id>``   hash: ``ts`` client time of the stored fix, ``p`` the packed fix,
  ``x``/``y`` lng/lat, ``a`` availability, ``c`` vehicle class. Expires a day after the last
  update, so forgotten drivers cost nothing.
- ``<p>seen``            sorted set: driver -> server time of the last accepted update. The
  staleness index: search ignores members older than the bound, and the sweeper removes
  them from the GEO sets, since Redis GEO has no per-member TTL.
- ``<p>geo:all``         GEO set of every online driver (any availability but OFFLINE), for
  the admin map.
- ``<p>geo:avail:<c>``   GEO set of AVAILABLE drivers with vehicle class ``c``: availability
  lives in the index itself, so a search never sees a busy driver.
- ``<p>offered``         sorted set: driver -> when it was set OFFERED, so a hold that its
  owner never ended (it crashed) can be released.

Each operation is one Lua script call: one round trip, and atomic, which makes the
out-of-order check and the availability compare-and-set safe with many service copies.
Keys are built inside the scripts, so this layout targets one Redis (or one Cluster slot).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from location.domain import Availability, AvailabilityConflictError, Position

__all__ = ["LocationStore", "NearbyHit"]

VEHICLE_CLASSES = (0, 1, 2, 3)  # unspecified, standard, xl, comfort: the wire enum values
_PACK = struct.Struct("<dddddqq")  # lat lng heading speed accuracy client_ts server_ts
_BATCH = 1_000  # updates per script call: bounds one call's time inside Redis
_DAY_MS = 86_400_000
FIRST_SEARCH_RADIUS_M = 500.0

_INGEST = """
local p, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local seen, all = p .. 'seen', p .. 'geo:all'
local out = {}
for i = 4, #ARGV, 5 do
  local id, ts, x, y = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local key = p .. 'd:' .. id
  local cur = redis.call('HMGET', key, 'ts', 'a', 'c')
  if cur[1] and tonumber(cur[1]) >= ts then
    out[#out + 1] = 0
  else
    redis.call('HSET', key, 'ts', ARGV[i + 1], 'p', ARGV[i + 4], 'x', x, 'y', y)
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', seen, now, id)
    local a = cur[2] or '4'
    if a ~= '4' then redis.call('GEOADD', all, x, y, id) end
    if a == '1' then redis.call('GEOADD', p .. 'geo:avail:' .. (cur[3] or '0'), x, y, id) end
    out[#out + 1] = tonumber(a)
  end
end
return out
"""

_SET_AVAILABILITY = """
local p, id, new, class, expected, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = ARGV[7]
local key = p .. 'd:' .. id
local cur = redis.call('HMGET', key, 'a', 'c', 'x', 'y')
local prev = cur[1] or '4'
if expected ~= '' and prev ~= expected then return {0, tonumber(prev)} end
if class == '' then class = cur[2] or '0' end
redis.call('HSET', key, 'a', new, 'c', class)
redis.call('PEXPIRE', key, ttl)
if new == '2' then redis.call('ZADD', p .. 'offered', now, id)
else redis.call('ZREM', p .. 'offered', id) end
for c = 0, 3 do redis.call('ZREM', p .. 'geo:avail:' .. c, id) end
if new == '4' then
  redis.call('ZREM', p .. 'geo:all', id)
elseif cur[3] and redis.call('ZSCORE', p .. 'seen', id) then
  redis.call('GEOADD', p .. 'geo:all', cur[3], cur[4], id)
  if new == '1' then redis.call('GEOADD', p .. 'geo:avail:' .. class, cur[3], cur[4], id) end
end
return {1, tonumber(prev)}
"""

# Search small first and widen (FIELD-NOTES: GEOSEARCH cost grows with the members inside
# the circle). Once a circle holds `limit` usable drivers, nobody outside it can be nearer,
# so the answer is exact. Intermediate circles are read whole (they are small by design);
# only the last one is capped with COUNT, with headroom for stale or excluded members.
_NEAREST = """
local p, now, stale, x, y, radius, limit, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local first, nclasses = tonumber(ARGV[9]), tonumber(ARGV[10])
local excluded = {}
for i = 11 + nclasses, #ARGV do excluded[ARGV[i]] = true end
local seen = p .. 'seen'
local r = math.min(first, radius)
local hits
while true do
  hits = {}
  for i = 11, 10 + nclasses do
    local found
    if r < radius then
      found = redis.call('GEOSEARCH', p .. 'geo:avail:' .. ARGV[i], 'FROMLONLAT', x, y,
        'BYRADIUS', r, 'm', 'ASC', 'WITHDIST')
    else
      found = redis.call('GEOSEARCH', p .. 'geo:avail:' .. ARGV[i], 'FROMLONLAT', x, y,
        'BYRADIUS', r, 'm', 'ASC', 'COUNT', want, 'WITHDIST')
    end
    for _, hit in ipairs(found) do
      local id = hit[1]
      if not excluded[id] then
        local at = redis.call('ZSCORE', seen, id)
        if at and now - tonumber(at) <= stale then
          hits[#hits + 1] = {id, hit[2], ARGV[i]}
        end
      end
    end
  end
  if #hits >= limit or r >= radius then break end
  r = math.min(r * 2, radius)
end
table.sort(hits, function(a, b) return tonumber(a[2]) < tonumber(b[2]) end)
local out = {}
for i = 1, math.min(limit, #hits) do
  local h = hits[i]
  out[#out + 1] = {h[1], h[2], h[3], redis.call('HGET', p .. 'd:' .. h[1], 'p')}
end
return out
"""

_IN_AREA = """
local p, now, stale, x, y, w, h, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local found = redis.call('GEOSEARCH', p .. 'geo:all', 'FROMLONLAT', x, y,
  'BYBOX', w, h, 'm', 'COUNT', limit + 1)
local out = {}
for _, id in ipairs(found) do
  local at = redis.call('ZSCORE', p .. 'seen', id)
  if at and now - tonumber(at) <= stale then
    local d = redis.call('HMGET', p .. 'd:' .. id, 'p', 'a', 'c')
    if d[1] then out[#out + 1] = {id, d[1], d[2] or '4', d[3] or '0'} end
  end
end
return {#found > limit and 1 or 0, out}
"""

# A hold (OFFERED) nobody ended: the process that reserved the driver died before it could
# offer or release. Older than any offer can live, it is released to AVAILABLE.
_RELEASE_HELD = """
local p, cutoff, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held = redis.call('ZRANGE', p .. 'offered', '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, batch)
for _, id in ipairs(held) do
  local key = p .. 'd:' .. id
  local cur = redis.call('HMGET', key, 'a', 'c', 'x', 'y')
  if cur[1] == '2' then
    redis.call('HSET', key, 'a', '1')
    if cur[3] and redis.call('ZSCORE', p .. 'seen', id) then
      redis.call('GEOADD', p .. 'geo:avail:' .. (cur[2] or '0'), cur[3], cur[4], id)
    end
  end
  redis.call('ZREM', p .. 'offered', id)
end
return #held
"""

_SWEEP = """
local p, cutoff, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stale = redis.call('ZRANGE', p .. 'seen', '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, batch)
for _, id in ipairs(stale) do
  redis.call('ZREM', p .. 'geo:all', id)
  for c = 0, 3 do redis.call('ZREM', p .. 'geo:avail:' .. c, id) end
  redis.call('ZREM', p .. 'seen', id)
end
return #stale
"""


@dataclass(frozen=True, slots=True)
class NearbyHit:
    """One search result: the stored position plus the distance from the centre."""

    position: Position
    distance_m: float


def pack(position: Position) -> bytes:
    return _PACK.pack(
        position.lat,
        position.lng,
        position.heading,
        position.speed_mps,
        position.accuracy_m,
        position.client_ts_ms,
        position.server_ts_ms,
    )


def unpack(driver_id: str, packed: bytes, availability: int, vehicle_class: int) -> Position:
    lat, lng, heading, speed, accuracy, client_ts, server_ts = _PACK.unpack(packed)
    return Position(
        driver_id,
        lat,
        lng,
        heading,
        speed,
        accuracy,
        client_ts,
        server_ts,
        Availability(availability),
        vehicle_class,
    )


class LocationStore:
    """The Redis adapter of the location service; every method is one round trip."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "loc:") -> None:
        self._redis = client
        self._prefix = prefix
        self._ingest = client.register_script(_INGEST)
        self._set_availability = client.register_script(_SET_AVAILABILITY)
        self._nearest = client.register_script(_NEAREST)
        self._in_area = client.register_script(_IN_AREA)
        self._sweep = client.register_script(_SWEEP)
        self._release_held = client.register_script(_RELEASE_HELD)

    async def ping(self) -> None:
        await self._redis.ping()

    async def apply(self, positions: Sequence[Position], *, now_ms: int) -> list[int]:
        """Store the newer of each update; per update, the driver's availability when it was
        applied, or 0 when it was older than (or as old as) the stored fix and dropped."""
        results: list[int] = []
        for start in range(0, len(positions), _BATCH):
            args: list[str | bytes | int | float] = [self._prefix, now_ms, _DAY_MS]
            for pos in positions[start : start + _BATCH]:
                args += (pos.driver_id, pos.client_ts_ms, pos.lng, pos.lat, pack(pos))
            results += await self._ingest(args=args)
        return results

    async def set_availability(
        self,
        driver_id: str,
        availability: Availability,
        *,
        vehicle_class: int = 0,
        expected: Availability | None = None,
    ) -> Availability:
        """Set availability (and the class when non-zero); returns the previous value.

        With ``expected`` it is a compare-and-set that raises AvailabilityConflictError."""
        ok, previous = await self._set_availability(
            args=[
                self._prefix,
                driver_id,
                int(availability),
                vehicle_class or "",
                int(expected) if expected is not None else "",
                _DAY_MS,
                time.time_ns() // 1_000_000,
            ]
        )
        if not ok:
            assert expected is not None
            raise AvailabilityConflictError(driver_id, expected, Availability(previous))
        return Availability(previous)

    async def get(self, driver_id: str) -> Position | None:
        """The stored position of a driver, stale or not, or None."""
        packed, availability, vehicle_class = await self._redis.hmget(
            f"{self._prefix}d:{driver_id}", ["p", "a", "c"]
        )
        if not isinstance(packed, bytes):
            return None
        return unpack(driver_id, packed, int(availability or 4), int(vehicle_class or 0))

    async def nearest(
        self,
        lat: float,
        lng: float,
        *,
        radius_m: float,
        limit: int,
        vehicle_class: int | None,
        exclude: Sequence[str],
        now_ms: int,
        stale_ms: int,
    ) -> list[NearbyHit]:
        """Fresh AVAILABLE drivers within ``radius_m``, nearest first, at most ``limit``."""
        classes = VEHICLE_CLASSES if vehicle_class is None else (vehicle_class,)
        want = limit + len(exclude) + 16
        rows = await self._nearest(
            args=[
                self._prefix,
                now_ms,
                stale_ms,
                lng,
                lat,
                radius_m,
                limit,
                want,
                FIRST_SEARCH_RADIUS_M,
                len(classes),
                *classes,
                *exclude,
            ]
        )
        hits = []
        for driver_id, distance, vehicle_class_code, packed in rows:
            if packed is None:  # expired between search and read
                continue
            position = unpack(
                driver_id.decode(), packed, Availability.AVAILABLE, int(vehicle_class_code)
            )
            hits.append(NearbyHit(position, float(distance)))
        return hits

    async def in_area(
        self,
        centre: tuple[float, float],
        size_m: tuple[float, float],
        *,
        limit: int,
        now_ms: int,
        stale_ms: int,
    ) -> tuple[list[Position], bool]:
        """Fresh online drivers in a box (centre lat/lng, width/height in metres); and whether
        more matched than ``limit``."""
        truncated, rows = await self._in_area(
            args=[self._prefix, now_ms, stale_ms, centre[1], centre[0], *size_m, limit]
        )
        positions = [
            unpack(driver_id.decode(), packed, int(a), int(c)) for driver_id, packed, a, c in rows
        ]
        return positions[:limit], bool(truncated)

    async def sweep_stale(self, *, cutoff_ms: int, batch: int = 1_000) -> int:
        """Remove drivers last seen at or before ``cutoff_ms`` from the GEO sets."""
        removed = 0
        while True:
            count = int(await self._sweep(args=[self._prefix, cutoff_ms, batch]))
            removed += count
            if count < batch:
                return removed

    async def release_held(self, *, cutoff_ms: int, batch: int = 1_000) -> int:
        """Make drivers held OFFERED since ``cutoff_ms`` or earlier AVAILABLE again."""
        return int(await self._release_held(args=[self._prefix, cutoff_ms, batch]))

    async def claim_event(self, consumer: str, event_id: str, *, ttl_s: int = 7 * 86_400) -> bool:
        """Idempotency guard for consumed events: True the first time an id is seen."""
        key = f"{self._prefix}evt:{consumer}:{event_id}"
        return bool(await self._redis.set(key, 1, nx=True, ex=ttl_s))

    async def forget_event(self, consumer: str, event_id: str) -> None:
        """Undo claim_event when handling failed, so a redelivery is processed."""
        await self._redis.delete(f"{self._prefix}evt:{consumer}:{event_id}")
