"""Live positions and the availability index in Redis.

Layout (``<p>`` is the key prefix, ``loc:`` by default):

- ``<p>d:<driver_id>``   hash: ``ts`` client time of the stored fix, ``p`` the packed fix,
  ``x``/``y`` lng/lat, ``a`` availability, ``c`` vehicle class, ``h`` the trip holding the
  driver (OFFERED or ON_TRIP), ``t`` the time of the last event (or rebuild) that set the
  availability. Expires a day after the last update, so forgotten drivers cost nothing.
- ``<p>seen``            sorted set: driver -> server time of the last accepted update. The
  staleness index: search ignores members older than the bound, and the sweeper removes
  them from the GEO sets, since Redis GEO has no per-member TTL.
- ``<p>geo:all``         GEO set of every online driver (any availability but OFFLINE), for
  the admin map.
- ``<p>geo:avail:<c>``   GEO set of AVAILABLE drivers with vehicle class ``c``: availability
  lives in the index itself, so a search never sees a busy driver.
- ``<p>offered``         sorted set: driver -> when it was set OFFERED, so a hold that its
  owner never ended (it crashed) can be released.
- ``<p>index:built``     marker written when availability was rebuilt from the systems of
  record; missing means Redis lost its data (see ``location/rebuild.py``).
- ``<p>index:rebuilding`` lock of the rebuild in progress (one service copy at a time).
- ``<p>trk:<trip_id>``   list: the packed fixes of the driver the trip holds ON_TRIP, in the
  order they were applied, capped to the newest ``track_cap``; expires a day after its first
  fix. The ride's measured distance (``GetTripDistance``) is read from it. It is written by
  the ingest script itself, so a report costs no extra round trip: one RPUSH inside the
  script, and only for drivers ON_TRIP (the rest pay one more field in the HMGET they do
  anyway). It starts at the acceptance, not at the ride's start, because the start reaches
  this service as an event that may lag behind the first metres of the ride; the reader
  selects the ride by the fixes' receive times instead.

Availability has one writer, this service: from driver and trip events (each change guarded
by the event's time, ``t``, so a late or replayed event never undoes a newer one, and by the
holding trip, ``h``, so one trip's end never frees a driver another trip holds), from a
rebuild, and from the one change dispatch makes itself, ReserveDriver/ReleaseDriver (a hold
for one trip; those carry no event time and leave ``t`` alone).

Each operation is one Lua script call: one round trip, and atomic, which makes the
out-of-order check and the availability compare-and-set safe with many service copies.
Keys are built inside the scripts, so this layout targets one Redis (or one Cluster slot).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from location.domain import (
    TRACK_CAP,
    Availability,
    AvailabilityConflictError,
    NearbyHit,
    Position,
    SnapshotEntry,
)

__all__ = ["LocationStore"]

VEHICLE_CLASSES = (0, 1, 2, 3)  # unspecified, standard, xl, comfort: the wire enum values
_PACK = struct.Struct("<dddddqq")  # lat lng heading speed accuracy client_ts server_ts
_BATCH = 1_000  # updates per script call: bounds one call's time inside Redis
_DAY_MS = 86_400_000
FIRST_SEARCH_RADIUS_M = 500.0
_BUILT = "index:built"
_REBUILDING = "index:rebuilding"
_OFFLINE = "4"
_ONLINE = "123"  # AVAILABLE, OFFERED, ON_TRIP
_HELD = "23"  # OFFERED, ON_TRIP

_INGEST = """
local p, now, ttl, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local seen, all = p .. 'seen', p .. 'geo:all'
local out = {}
for i = 5, #ARGV, 5 do
  local id, ts, x, y = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local key = p .. 'd:' .. id
  local cur = redis.call('HMGET', key, 'ts', 'a', 'c', 'h')
  if cur[1] and tonumber(cur[1]) >= ts then
    out[#out + 1] = 0
  else
    redis.call('HSET', key, 'ts', ARGV[i + 1], 'p', ARGV[i + 4], 'x', x, 'y', y)
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', seen, now, id)
    local a = cur[2] or '4'
    if a ~= '4' then redis.call('GEOADD', all, x, y, id) end
    if a == '1' then redis.call('GEOADD', p .. 'geo:avail:' .. (cur[3] or '0'), x, y, id) end
    if a == '3' and cur[4] then
      local track = p .. 'trk:' .. cur[4]
      local n = redis.call('RPUSH', track, ARGV[i + 4])
      if n == 1 then redis.call('PEXPIRE', track, ttl)
      elseif n > cap then redis.call('LTRIM', track, -cap, -1) end
    end
    out[#out + 1] = tonumber(a)
  end
end
return out
"""

# One availability change of one driver, under guards; shared by the scripts below.
# states: the availabilities it applies from ('' any); hold: the trip that must hold the
# driver ('' any); at: the change's time in ms, applied only if no newer change was ('' no
# guard, and the stored time is kept); newhold: '' keep, '-' clear, else the holding trip.
_CHANGE_FN = """
local function change(p, id, new, class, states, hold, at, newhold, ttl, now)
  local key = p .. 'd:' .. id
  local cur = redis.call('HMGET', key, 'a', 'c', 'x', 'y', 'h', 't')
  local prev = cur[1] or '4'
  if at ~= '' and cur[6] and tonumber(cur[6]) > tonumber(at) then return {0, tonumber(prev)} end
  if states ~= '' and not string.find(states, prev, 1, true) then return {0, tonumber(prev)} end
  if hold ~= '' and cur[5] ~= hold then return {0, tonumber(prev)} end
  if new == '' then new = prev end
  if class == '' then class = cur[2] or '0' end
  redis.call('HSET', key, 'a', new, 'c', class)
  if newhold == '-' then redis.call('HDEL', key, 'h')
  elseif newhold ~= '' then redis.call('HSET', key, 'h', newhold) end
  if at ~= '' then redis.call('HSET', key, 't', at) end
  redis.call('PEXPIRE', key, ttl)
  if new ~= '2' then redis.call('ZREM', p .. 'offered', id)
  elseif prev ~= '2' or newhold ~= '' then redis.call('ZADD', p .. 'offered', now, id) end
  for c = 0, 3 do redis.call('ZREM', p .. 'geo:avail:' .. c, id) end
  if new == '4' then
    redis.call('ZREM', p .. 'geo:all', id)
  elseif cur[3] and redis.call('ZSCORE', p .. 'seen', id) then
    redis.call('GEOADD', p .. 'geo:all', cur[3], cur[4], id)
    if new == '1' then redis.call('GEOADD', p .. 'geo:avail:' .. class, cur[3], cur[4], id) end
  end
  return {1, tonumber(prev)}
end
"""

_CHANGE = (
    _CHANGE_FN
    + """
return change(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  ARGV[10])
"""
)

# A page of the rebuild snapshot, while this rebuild still holds the lock (a flush during a
# rebuild drops the lock, and the rebuild starts over). Every row carries the snapshot's time,
# so a driver changed by an event newer than the snapshot keeps the event's state; and a
# driver the snapshot calls AVAILABLE but who is OFFERED now was reserved after the snapshot
# was read (a flush empties every hold), so the hold stays.
_SNAPSHOT = (
    _CHANGE_FN
    + """
local p, lock, token, lock_ttl, at, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7]
if redis.call('GET', p .. lock) ~= token then return -1 end
redis.call('PEXPIRE', p .. lock, lock_ttl)
local applied = 0
for i = 8, #ARGV, 4 do
  local id, class, new, trip = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local a = redis.call('HGET', p .. 'd:' .. id, 'a')
  if not (new == '1' and a == '2') then
    local hold = trip
    if trip == '' then hold = '-' end
    applied = applied + change(p, id, new, class, '', '', at, hold, ttl, now)[1]
  end
end
return applied
"""
)

_FINISH_REBUILD = """
local p, lock, token, marker, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('GET', p .. lock) ~= token then return 0 end
redis.call('SET', p .. marker, info)
redis.call('DEL', p .. lock)
return 1
"""

_EXTEND_REBUILD = """
if redis.call('GET', ARGV[1] .. ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('PEXPIRE', ARGV[1] .. ARGV[2], ARGV[4])
return 1
"""

_ABANDON_REBUILD = """
if redis.call('GET', ARGV[1] .. ARGV[2]) == ARGV[3] then redis.call('DEL', ARGV[1] .. ARGV[2]) end
return 0
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
    redis.call('HDEL', key, 'h')
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

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "loc:", track_cap: int = TRACK_CAP
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._track_cap = track_cap
        self._ingest = client.register_script(_INGEST)
        self._change_script = client.register_script(_CHANGE)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._finish_rebuild = client.register_script(_FINISH_REBUILD)
        self._abandon_rebuild = client.register_script(_ABANDON_REBUILD)
        self._extend_rebuild = client.register_script(_EXTEND_REBUILD)
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
            args: list[str | bytes | int | float] = [
                self._prefix,
                now_ms,
                _DAY_MS,
                self._track_cap,
            ]
            for pos in positions[start : start + _BATCH]:
                args += (pos.driver_id, pos.client_ts_ms, pos.lng, pos.lat, pack(pos))
            results += await self._ingest(args=args)
        return results

    async def _change(
        self,
        driver_id: str,
        new: Availability | None,
        *,
        vehicle_class: int = 0,
        states: str = "",
        hold: str = "",
        at_ms: int | None = None,
        new_hold: str = "",
    ) -> tuple[bool, Availability]:
        """Run ``_CHANGE`` (see its comment for the guards); (applied, previous)."""
        ok, previous = await self._change_script(
            args=[
                self._prefix,
                driver_id,
                int(new) if new is not None else "",
                vehicle_class or "",
                states,
                hold,
                at_ms if at_ms is not None else "",
                new_hold,
                _DAY_MS,
                time.time_ns() // 1_000_000,
            ]
        )
        return bool(ok), Availability(previous)

    async def driver_online(self, driver_id: str, vehicle_class: int, *, at_ms: int) -> bool:
        """driver.online at ``at_ms``: an OFFLINE driver becomes AVAILABLE with the class; an
        online one keeps their availability and takes the class. False when a newer change
        was applied already."""
        ok, previous = await self._change(
            driver_id,
            Availability.AVAILABLE,
            vehicle_class=vehicle_class,
            states=_OFFLINE,
            at_ms=at_ms,
            new_hold="-",
        )
        if ok or previous is Availability.OFFLINE:
            return ok
        ok, _ = await self._change(
            driver_id, None, vehicle_class=vehicle_class, states=_ONLINE, at_ms=at_ms
        )
        return ok

    async def driver_offline(self, driver_id: str, *, at_ms: int) -> bool:
        """driver.offline at ``at_ms``: OFFLINE, out of search at once, any hold dropped."""
        ok, _ = await self._change(driver_id, Availability.OFFLINE, at_ms=at_ms, new_hold="-")
        return ok

    async def assign(self, driver_id: str, trip_id: str, *, at_ms: int) -> bool:
        """trip.accepted at ``at_ms``: an online driver is ON_TRIP, held by ``trip_id``."""
        ok, _ = await self._change(
            driver_id, Availability.ON_TRIP, states=_ONLINE, at_ms=at_ms, new_hold=trip_id
        )
        return ok

    async def free(self, driver_id: str, trip_id: str, *, at_ms: int) -> bool:
        """The end of ``trip_id``'s hold at ``at_ms`` (its offer ended, or the trip ended or
        lost its driver): AVAILABLE again, only if that trip still holds the driver."""
        ok, _ = await self._change(
            driver_id,
            Availability.AVAILABLE,
            states=_HELD,
            hold=trip_id,
            at_ms=at_ms,
            new_hold="-",
        )
        return ok

    async def reserve(self, driver_id: str, trip_id: str) -> None:
        """AVAILABLE -> OFFERED, held by ``trip_id``; AvailabilityConflictError otherwise."""
        ok, previous = await self._change(
            driver_id,
            Availability.OFFERED,
            states=str(int(Availability.AVAILABLE)),
            new_hold=trip_id,
        )
        if not ok:
            raise AvailabilityConflictError(driver_id, Availability.AVAILABLE, previous)

    async def release(self, driver_id: str, trip_id: str) -> bool:
        """OFFERED -> AVAILABLE if ``trip_id`` holds the driver; False (nothing changed)
        otherwise."""
        ok, _ = await self._change(
            driver_id,
            Availability.AVAILABLE,
            states=str(int(Availability.OFFERED)),
            hold=trip_id,
            new_hold="-",
        )
        return ok

    async def index_built(self) -> bool:
        """Whether the marker a finished rebuild writes is there: gone after a flush or a
        restart of an unpersisted Redis, which is how the loss is noticed."""
        return bool(await self._redis.exists(self._prefix + _BUILT))

    async def begin_rebuild(self, token: str, *, lock_ms: int) -> bool:
        """Take the rebuild lock (one copy rebuilds at a time); False when another has it."""
        return bool(await self._redis.set(self._prefix + _REBUILDING, token, nx=True, px=lock_ms))

    async def extend_rebuild(self, token: str, *, lock_ms: int) -> bool:
        """Extend the lock while a rebuild reads; False when it is gone (Redis was emptied)."""
        return bool(await self._extend_rebuild(args=[self._prefix, _REBUILDING, token, lock_ms]))

    async def apply_snapshot(
        self, entries: Sequence[SnapshotEntry], *, at_ms: int, token: str, lock_ms: int
    ) -> int | None:
        """Apply rebuild entries as of ``at_ms`` (see ``_SNAPSHOT``) and extend the lock;
        the number applied, or None when the lock was lost (a flush): start over."""
        applied = 0
        for start in range(0, len(entries), _BATCH):
            args: list[str | int] = [
                self._prefix,
                _REBUILDING,
                token,
                lock_ms,
                at_ms,
                _DAY_MS,
                time.time_ns() // 1_000_000,
            ]
            for e in entries[start : start + _BATCH]:
                args += (e.driver_id, e.vehicle_class or "", int(e.availability), e.trip_id)
            count = int(await self._snapshot(args=args))
            if count < 0:
                return None
            applied += count
        return applied

    async def finish_rebuild(self, token: str, *, info: str) -> bool:
        """Write the marker and drop the lock, if this rebuild still holds it."""
        return bool(
            await self._finish_rebuild(args=[self._prefix, _REBUILDING, token, _BUILT, info])
        )

    async def abandon_rebuild(self, token: str) -> None:
        """Drop the lock (if still ours) after a failed rebuild, so any copy may retry."""
        await self._abandon_rebuild(args=[self._prefix, _REBUILDING, token])

    async def track(self, trip_id: str) -> list[Position] | None:
        """The fixes recorded while ``trip_id`` held its driver ON_TRIP, oldest first; None
        when none is (the trip never held a driver here, or Redis lost the track)."""
        packed = await self._redis.lrange(f"{self._prefix}trk:{trip_id}", 0, -1)
        if not packed:
            return None
        return [unpack("", p, Availability.ON_TRIP, 0) for p in packed if isinstance(p, bytes)]

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
