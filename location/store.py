"""Live positions and the availability index in Redis.

Layout (``<p>`` is the shard's prefix: the key prefix, ``loc:`` by default, and the shard's
hash tag, ``loc:{0}:``; see "Shards" below):

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
out-of-order check and the availability compare-and-set safe with many service copies. A
batch of them (``nearest_many``, ``reserve_many``) is one pipeline of those scripts on one
Valkey: one round trip for the batch, each script still atomic on its own.

Shards (a Valkey Cluster): a script may only touch keys of one hash slot, so every key above
carries its shard's hash tag, ``loc:{<k>}:...``, and every key a script is known to touch
before it runs is passed in KEYS (the cluster client routes the call by them); the keys only
data names (a driver a search found, the track of the trip a driver's hash holds) are built
inside the script from the same shard prefix, so they share the slot. A driver's shard is
``crc32(driver_id) % shards`` (``RIDESHARE_LOCATION_SHARDS``, 1 by default): chosen by the
driver, not by where the driver is, so a driver's hash and its index entries always share a
slot and never move, whichever way the driver drives. A geographic shard (a city or an H3
region) would have to move a driver crossing its border from one slot to another, in two
steps that no script can make atomic, and the availability compare-and-set (a driver on one
trip at a time) would have a window. The price is paid by searches: every search asks every
shard (one script per shard, side by side, each over 1/shards of the drivers) and keeps the
nearest ``limit`` of their union; each shard's answer is its exact nearest, so the merged
answer is exact, and a circle over any boundary of the map finds everyone inside it. Each
script stays bounded by the members inside the circle, as on one node. With one shard
(the default) everything is in one slot and one call, as before. See docs/SHARDING.md.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from location.domain import (
    TRACK_CAP,
    Availability,
    AvailabilityConflictError,
    NearbyHit,
    Position,
    Search,
    SnapshotEntry,
)
from rideshare.redis_client import RedisClient

__all__ = ["LocationStore", "shard_of", "shard_prefix"]

T = TypeVar("T")

VEHICLE_CLASSES = (0, 1, 2, 3)  # unspecified, standard, xl, comfort: the wire enum values
_PACK = struct.Struct("<dddddqq")  # lat lng heading speed accuracy client_ts server_ts
_BATCH = 1_000  # updates per script call: bounds one call's time inside Redis
_IN_FLIGHT = 32  # a batch's calls in flight at once on a cluster (half of open_redis's pool)
_DAY_MS = 86_400_000
FIRST_SEARCH_RADIUS_M = 500.0
_BUILT = "index:built"
_REBUILDING = "index:rebuilding"
_OFFLINE = "4"
_ONLINE = "123"  # AVAILABLE, OFFERED, ON_TRIP
_HELD = "23"  # OFFERED, ON_TRIP

# Every script takes the shard's fixed keys first, in this order (``_fixed_keys``), then the
# keys of the drivers it names. Keys that only data can name (a driver a search found, the
# track of the trip a driver's hash holds) are built from ARGV's shard prefix ``p``: they carry
# the same hash tag, so they are in the same slot, which Valkey checks when they are touched.
_FIXED = """
local seen, all, offered = KEYS[1], KEYS[2], KEYS[3]
local avail = {[0] = KEYS[4], KEYS[5], KEYS[6], KEYS[7]}
"""
_NFIXED = 7

_INGEST = (
    _FIXED
    + """
local p, now, ttl, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 5 do
  local id, ts, x, y = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local key = KEYS[7 + (i - 5) / 5 + 1]
  local cur = redis.call('HMGET', key, 'ts', 'a', 'c', 'h')
  if cur[1] and tonumber(cur[1]) >= ts then
    out[#out + 1] = 0
  else
    redis.call('HSET', key, 'ts', ARGV[i + 1], 'p', ARGV[i + 4], 'x', x, 'y', y)
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', seen, now, id)
    local a = cur[2] or '4'
    if a ~= '4' then redis.call('GEOADD', all, x, y, id) end
    local geo = avail[tonumber(cur[3] or '0')]
    if a == '1' and geo then redis.call('GEOADD', geo, x, y, id) end
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
)

# One availability change of one driver (its hash at ``key``), under guards; shared by the
# scripts below. states: the availabilities it applies from ('' any); hold: the trip that must
# hold the driver ('' any); at: the change's time in ms, applied only if no newer change was
# ('' no guard, and the stored time is kept); newhold: '' keep, '-' clear, else the holding trip.
_CHANGE_FN = (
    _FIXED
    + """
local function change(key, id, new, class, states, hold, at, newhold, ttl, now)
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
  if new ~= '2' then redis.call('ZREM', offered, id)
  elseif prev ~= '2' or newhold ~= '' then redis.call('ZADD', offered, now, id) end
  for c = 0, 3 do redis.call('ZREM', avail[c], id) end
  if new == '4' then
    redis.call('ZREM', all, id)
  elseif cur[3] and redis.call('ZSCORE', seen, id) then
    redis.call('GEOADD', all, cur[3], cur[4], id)
    local geo = avail[tonumber(class)]
    if new == '1' and geo then redis.call('GEOADD', geo, cur[3], cur[4], id) end
  end
  return {1, tonumber(prev)}
end
"""
)

_CHANGE = (
    _CHANGE_FN
    + """
return change(KEYS[8], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9])
"""
)

# A page of the rebuild snapshot, while this rebuild still holds the lock (a flush during a
# rebuild drops the lock, and the rebuild starts over). Every row carries the snapshot's time,
# so a driver changed by an event newer than the snapshot keeps the event's state; and a
# driver the snapshot calls AVAILABLE but who is OFFERED now was reserved after the snapshot
# was read (a flush empties every hold), so the hold stays. KEYS[8] is the shard's lock.
_SNAPSHOT = (
    _CHANGE_FN
    + """
local lock, token, lock_ttl, at, ttl, now = KEYS[8], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('GET', lock) ~= token then return -1 end
redis.call('PEXPIRE', lock, lock_ttl)
local applied = 0
for i = 6, #ARGV, 4 do
  local id, class, new, trip = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = KEYS[8 + (i - 6) / 4 + 1]
  local a = redis.call('HGET', key, 'a')
  if not (new == '1' and a == '2') then
    local hold = trip
    if trip == '' then hold = '-' end
    applied = applied + change(key, id, new, class, '', '', at, hold, ttl, now)[1]
  end
end
return applied
"""
)

# KEYS: the shard's lock, its marker.
_FINISH_REBUILD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""

_EXTEND_REBUILD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_ABANDON_REBUILD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Search small first and widen (FIELD-NOTES: GEOSEARCH cost grows with the members inside
# the circle). Once a circle holds `limit` usable drivers, nobody outside it can be nearer,
# so the answer is exact. Intermediate circles are read whole (they are small by design);
# only the last one is capped with COUNT, with headroom for stale or excluded members.
# KEYS: the shard's seen, then one GEO set per class searched.
_NEAREST = """
local p, now, stale, x, y, radius, limit, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local first = tonumber(ARGV[9])
local excluded = {}
for i = 10, #ARGV do excluded[ARGV[i]] = true end
local seen = KEYS[1]
local r = math.min(first, radius)
local hits
while true do
  hits = {}
  for i = 2, #KEYS do
    local found
    if r < radius then
      found = redis.call('GEOSEARCH', KEYS[i], 'FROMLONLAT', x, y,
        'BYRADIUS', r, 'm', 'ASC', 'WITHDIST')
    else
      found = redis.call('GEOSEARCH', KEYS[i], 'FROMLONLAT', x, y,
        'BYRADIUS', r, 'm', 'ASC', 'COUNT', want, 'WITHDIST')
    end
    for _, hit in ipairs(found) do
      local id = hit[1]
      if not excluded[id] then
        local at = redis.call('ZSCORE', seen, id)
        if at and now - tonumber(at) <= stale then
          hits[#hits + 1] = {id, hit[2], i}
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
  out[#out + 1] = {h[1], h[2], h[3] - 2, redis.call('HGET', p .. 'd:' .. h[1], 'p')}
end
return out
"""

# KEYS: the shard's seen, geo:all.
_IN_AREA = """
local p, now, stale, x, y, w, h, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local found = redis.call('GEOSEARCH', KEYS[2], 'FROMLONLAT', x, y,
  'BYBOX', w, h, 'm', 'COUNT', limit + 1)
local out = {}
for _, id in ipairs(found) do
  local at = redis.call('ZSCORE', KEYS[1], id)
  if at and now - tonumber(at) <= stale then
    local d = redis.call('HMGET', p .. 'd:' .. id, 'p', 'a', 'c')
    if d[1] then out[#out + 1] = {id, d[1], d[2] or '4', d[3] or '0'} end
  end
end
return {#found > limit and 1 or 0, out}
"""

# A hold (OFFERED) nobody ended: the process that reserved the driver died before it could
# offer or release. Older than any offer can live, it is released to AVAILABLE.
_RELEASE_HELD = (
    _FIXED
    + """
local p, cutoff, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held = redis.call('ZRANGE', offered, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, batch)
for _, id in ipairs(held) do
  local key = p .. 'd:' .. id
  local cur = redis.call('HMGET', key, 'a', 'c', 'x', 'y')
  if cur[1] == '2' then
    redis.call('HSET', key, 'a', '1')
    redis.call('HDEL', key, 'h')
    local geo = avail[tonumber(cur[2] or '0')]
    if cur[3] and geo and redis.call('ZSCORE', seen, id) then
      redis.call('GEOADD', geo, cur[3], cur[4], id)
    end
  end
  redis.call('ZREM', offered, id)
end
return #held
"""
)

_SWEEP = (
    _FIXED
    + """
local cutoff, batch = ARGV[1], tonumber(ARGV[2])
local stale = redis.call('ZRANGE', seen, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, batch)
for _, id in ipairs(stale) do
  redis.call('ZREM', all, id)
  for c = 0, 3 do redis.call('ZREM', avail[c], id) end
  redis.call('ZREM', seen, id)
end
return #stale
"""
)


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


def shard_of(driver_id: str, shards: int) -> int:
    """The shard that holds ``driver_id``'s keys: stable for the driver's whole life, so its
    state never moves between slots (CRC-32 of the id, spread evenly)."""
    return zlib.crc32(driver_id.encode()) % shards if shards > 1 else 0


def shard_prefix(prefix: str, shard: int) -> str:
    """The start of every key of ``shard``: ``loc:{3}:``; the braces are the hash tag."""
    return f"{prefix}{{{shard}}}:"


def _classes(search: Search) -> tuple[int, ...]:
    """The vehicle classes (GEO sets) a search reads."""
    return VEHICLE_CLASSES if search.vehicle_class is None else (search.vehicle_class,)


def _hits(search: Search, rows: list[Any]) -> list[NearbyHit]:
    """The hits of one ``_NEAREST`` reply to ``search``."""
    classes = _classes(search)
    hits = []
    for driver_id, distance, class_index, packed in rows:
        if packed is None:  # expired between search and read
            continue
        position = unpack(
            driver_id.decode(), packed, Availability.AVAILABLE, classes[int(class_index)]
        )
        hits.append(NearbyHit(position, float(distance)))
    return hits


async def _side_by_side(calls: Sequence[Callable[[], Awaitable[T]]], *, limit: int) -> list[T]:
    """Every call, at most ``limit`` at a time, results in order: a batch takes a share of the
    client's connections, so neither its own calls nor other requests' wait out the client's
    deadline for one (``rideshare.redis_client``: a cluster call waits at most ``timeout_s``
    for a free connection)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def _pipelined(
    node: aioredis.Redis, script: AsyncScript, calls: Sequence[tuple[list[str], Sequence[Any]]]
) -> list[Any]:
    """``script`` once per (KEYS, ARGV) of ``calls``, in their order, in one pipeline: one
    round trip. The pipeline carries EVALSHA alone (redis-py's own pipelining of a script asks
    SCRIPT EXISTS first, a second round trip). The calls answered NOSCRIPT (the server
    restarted and lost its scripts) are made again, in order, in a second pipeline once the
    script is loaded. Any other error of a call is raised, after the pipeline ran whole."""

    async def run(batch: Sequence[tuple[list[str], Sequence[Any]]]) -> list[Any]:
        async with node.pipeline(transaction=False) as pipe:
            for keys, args in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    replies = await run(calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await node.script_load(script.script)
        again = await run([calls[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class LocationStore:
    """The Redis adapter of the location service. A call about one driver is one round trip
    to the driver's shard; a search is one round trip to every shard, side by side."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "loc:",
        shards: int = 1,
        track_cap: int = TRACK_CAP,
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self._redis = client
        self._prefix = prefix
        self._shards = shards
        self._track_cap = track_cap
        self._sp = [shard_prefix(prefix, k) for k in range(shards)]
        self._fixed = [
            [
                sp + "seen",
                sp + "geo:all",
                sp + "offered",
                *(sp + f"geo:avail:{c}" for c in VEHICLE_CLASSES),
            ]
            for sp in self._sp
        ]
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

    async def _every_shard(self, call: Callable[[int], Awaitable[T]]) -> list[T]:
        """``call(shard)`` for every shard, side by side; one shard is awaited as it is, so
        a single Valkey pays no task per call."""
        if self._shards == 1:
            return [await call(0)]
        return list(await asyncio.gather(*(call(k) for k in range(self._shards))))

    def _one_node(self) -> aioredis.Redis | None:
        """The client of the one Valkey, or None on a Redis Cluster, where a batch is made of
        single calls side by side instead of a pipeline: redis-py's async ClusterPipeline goes
        around what ``rideshare.redis_client`` adds to every cluster call (the bound on calls
        in flight, the wait for the slot map), retries a dropped connection by closing the
        whole client under every other call in flight, and leaves a NOSCRIPT (a replica that
        took over without the scripts) unloaded."""
        return None if isinstance(self._redis, RedisCluster) else self._redis

    def _shard(self, driver_id: str) -> int:
        return shard_of(driver_id, self._shards)

    def _driver_key(self, driver_id: str) -> str:
        return f"{self._sp[self._shard(driver_id)]}d:{driver_id}"

    async def ping(self) -> None:
        await self._redis.ping()

    async def apply(self, positions: Sequence[Position], *, now_ms: int) -> list[int]:
        """Store the newer of each update; per update, the driver's availability when it was
        applied, or 0 when it was older than (or as old as) the stored fix and dropped."""
        if self._shards == 1:
            return await self._apply_shard(0, positions, now_ms)
        by_shard: dict[int, list[int]] = {}
        for i, pos in enumerate(positions):
            by_shard.setdefault(self._shard(pos.driver_id), []).append(i)
        replies = await asyncio.gather(
            *(
                self._apply_shard(k, [positions[i] for i in idx], now_ms)
                for k, idx in by_shard.items()
            )
        )
        results = [0] * len(positions)
        for idx, reply in zip(by_shard.values(), replies, strict=True):
            for i, result in zip(idx, reply, strict=True):
                results[i] = result
        return results

    async def _apply_shard(
        self, shard: int, positions: Sequence[Position], now_ms: int
    ) -> list[int]:
        sp = self._sp[shard]
        results: list[int] = []
        for start in range(0, len(positions), _BATCH):
            batch = positions[start : start + _BATCH]
            args: list[str | bytes | int | float] = [sp, now_ms, _DAY_MS, self._track_cap]
            keys = list(self._fixed[shard])
            for pos in batch:
                keys.append(f"{sp}d:{pos.driver_id}")
                args += (pos.driver_id, pos.client_ts_ms, pos.lng, pos.lat, pack(pos))
            results += await self._ingest(keys=keys, args=args)
        return results

    def _change_call(
        self,
        driver_id: str,
        new: Availability | None,
        *,
        vehicle_class: int = 0,
        states: str = "",
        hold: str = "",
        at_ms: int | None = None,
        new_hold: str = "",
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``_CHANGE`` (see its comment for the guards)."""
        shard = self._shard(driver_id)
        keys = [*self._fixed[shard], f"{self._sp[shard]}d:{driver_id}"]
        args: list[str | int] = [
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
        return keys, args

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
        keys, args = self._change_call(
            driver_id,
            new,
            vehicle_class=vehicle_class,
            states=states,
            hold=hold,
            at_ms=at_ms,
            new_hold=new_hold,
        )
        ok, previous = await self._change_script(keys=keys, args=args)
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

    def _reserve_call(self, driver_id: str, trip_id: str) -> tuple[list[str], list[str | int]]:
        """``_CHANGE``'s compare-and-set of a hold: AVAILABLE -> OFFERED, held by the trip."""
        return self._change_call(
            driver_id,
            Availability.OFFERED,
            states=str(int(Availability.AVAILABLE)),
            new_hold=trip_id,
        )

    async def reserve(self, driver_id: str, trip_id: str) -> None:
        """AVAILABLE -> OFFERED, held by ``trip_id``; AvailabilityConflictError otherwise."""
        keys, args = self._reserve_call(driver_id, trip_id)
        ok, previous = await self._change_script(keys=keys, args=args)
        if not ok:
            raise AvailabilityConflictError(
                driver_id, Availability.AVAILABLE, Availability(previous)
            )

    async def reserve_many(self, holds: Sequence[tuple[str, str]]) -> list[bool]:
        """:meth:`reserve` of each (driver id, trip id), each on its own: per hold, whether
        the driver was AVAILABLE and is now held OFFERED for the trip (False: nothing changed).

        The holds of one driver run in the order given, so a driver named twice is held by
        the first and refused to the second. One Valkey: one pipeline of one compare-and-set
        per hold, in order, so one round trip (each hold is atomic on its own, not the
        batch). A Redis Cluster: the holds of each driver in order, drivers side by side
        (see :meth:`_one_node`). An error of Redis fails the call with the holds before it
        taken; a dispatcher that gets no answer leaves them to ``release_held``, as it does
        a ReserveDriver whose answer it lost."""
        if not holds:
            return []
        node = self._one_node()
        if node is not None:
            calls = [self._reserve_call(d, t) for d, t in holds]
            replies = await _pipelined(node, self._change_script, calls)
            return [bool(ok) for ok, _ in replies]
        by_driver: dict[str, list[int]] = {}
        for i, (driver_id, _) in enumerate(holds):
            by_driver.setdefault(driver_id, []).append(i)
        held = [False] * len(holds)

        async def in_turn(indices: list[int]) -> None:
            for i in indices:
                keys, args = self._reserve_call(*holds[i])
                ok, _ = await self._change_script(keys=keys, args=args)
                held[i] = bool(ok)

        await _side_by_side(
            [functools.partial(in_turn, indices) for indices in by_driver.values()],
            limit=_IN_FLIGHT,
        )
        return held

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

    def _lock_key(self, shard: int) -> str:
        return self._sp[shard] + _REBUILDING

    async def index_built(self) -> bool:
        """Whether every shard holds the marker a finished rebuild writes: gone after a flush
        or a restart of an unpersisted Redis (or of one cluster node that had no replica to
        take over), which is how the loss is noticed."""
        markers = [sp + _BUILT for sp in self._sp]
        return int(await self._redis.exists(*markers)) == len(markers)

    async def begin_rebuild(self, token: str, *, lock_ms: int) -> bool:
        """Take the rebuild lock (one copy rebuilds at a time); False when another has it.
        The lock is taken on shard 0 and copied to the others, so each shard's script can
        tell that the shard lost its data (and its copy of the lock) in the meantime."""
        if not await self._redis.set(self._lock_key(0), token, nx=True, px=lock_ms):
            return False
        for shard in range(1, self._shards):
            await self._redis.set(self._lock_key(shard), token, px=lock_ms)
        return True

    async def extend_rebuild(self, token: str, *, lock_ms: int) -> bool:
        """Extend the lock while a rebuild reads; False when it is gone (Redis was emptied)."""
        held = await self._every_shard(
            lambda k: self._extend_rebuild(keys=[self._lock_key(k)], args=[token, lock_ms])
        )
        return all(bool(h) for h in held)

    async def apply_snapshot(
        self, entries: Sequence[SnapshotEntry], *, at_ms: int, token: str, lock_ms: int
    ) -> int | None:
        """Apply rebuild entries as of ``at_ms`` (see ``_SNAPSHOT``) and extend the lock;
        the number applied, or None when the lock was lost (a flush): start over."""
        by_shard: dict[int, list[SnapshotEntry]] = {}
        for e in entries:
            by_shard.setdefault(self._shard(e.driver_id), []).append(e)
        applied = 0
        for shard, rows in by_shard.items():
            sp = self._sp[shard]
            for start in range(0, len(rows), _BATCH):
                args: list[str | int] = [
                    token,
                    lock_ms,
                    at_ms,
                    _DAY_MS,
                    time.time_ns() // 1_000_000,
                ]
                keys = [*self._fixed[shard], self._lock_key(shard)]
                for e in rows[start : start + _BATCH]:
                    keys.append(f"{sp}d:{e.driver_id}")
                    args += (e.driver_id, e.vehicle_class or "", int(e.availability), e.trip_id)
                count = int(await self._snapshot(keys=keys, args=args))
                if count < 0:
                    return None
                applied += count
        return applied

    async def finish_rebuild(self, token: str, *, info: str) -> bool:
        """Write each shard's marker and drop its lock, if this rebuild still holds it; False
        when a shard lost it (that shard stays unmarked, so the rebuild runs again)."""
        done = True
        for shard in range(self._shards):
            keys = [self._lock_key(shard), self._sp[shard] + _BUILT]
            done = bool(await self._finish_rebuild(keys=keys, args=[token, info])) and done
        return done

    async def abandon_rebuild(self, token: str) -> None:
        """Drop the lock (if still ours) after a failed rebuild, so any copy may retry."""
        for shard in range(self._shards):
            await self._abandon_rebuild(keys=[self._lock_key(shard)], args=[token])

    async def track(self, trip_id: str) -> list[Position] | None:
        """The fixes recorded while ``trip_id`` held its driver ON_TRIP, oldest first; None
        when none is (the trip never held a driver here, or Redis lost the track). The track
        lives in its driver's shard, which the trip id does not tell: every shard is asked."""
        found = await self._every_shard(
            lambda k: self._redis.lrange(f"{self._sp[k]}trk:{trip_id}", 0, -1)
        )
        packed = max(found, key=len)
        if not packed:
            return None
        return [unpack("", p, Availability.ON_TRIP, 0) for p in packed if isinstance(p, bytes)]

    async def get(self, driver_id: str) -> Position | None:
        """The stored position of a driver, stale or not, or None."""
        packed, availability, vehicle_class = await self._redis.hmget(
            self._driver_key(driver_id), ["p", "a", "c"]
        )
        if not isinstance(packed, bytes):
            return None
        return unpack(driver_id, packed, int(availability or 4), int(vehicle_class or 0))

    def _nearest_call(
        self, shard: int, search: Search, *, radius: float, first: float, now_ms: int, stale_ms: int
    ) -> tuple[list[str], list[str | int | float]]:
        """KEYS and ARGV of ``_NEAREST`` for ``search`` in ``shard``, from ``first`` metres
        widening up to ``radius``."""
        sp = self._sp[shard]
        want = search.limit + len(search.exclude) + 16
        keys = [sp + "seen", *(f"{sp}geo:avail:{c}" for c in _classes(search))]
        args: list[str | int | float] = [
            sp,
            now_ms,
            stale_ms,
            search.lng,
            search.lat,
            radius,
            search.limit,
            want,
            first,
            *search.exclude,
        ]
        return keys, args

    async def nearest(self, search: Search, *, now_ms: int, stale_ms: int) -> list[NearbyHit]:
        """Fresh AVAILABLE drivers of the search's class within its radius, nearest first, at
        most its limit.

        With shards, every shard reads the same circle, and the circle doubles until their
        union holds ``limit`` (or it reaches ``radius_m``); each shard answers its nearest
        ``limit`` within it, so the nearest ``limit`` of the union is the exact answer."""
        limit, radius_m = search.limit, search.radius_m

        async def one(shard: int, radius: float, first: float) -> list[NearbyHit]:
            keys, args = self._nearest_call(
                shard, search, radius=radius, first=first, now_ms=now_ms, stale_ms=stale_ms
            )
            return _hits(search, await self._nearest(keys=keys, args=args))

        if self._shards == 1:  # the script widens the circle itself: one round trip
            return await one(0, radius_m, FIRST_SEARCH_RADIUS_M)
        # Shards widen together: each shard holds 1/shards of the drivers, so a shard widening
        # alone until it has `limit` would read a circle shards times larger than needed. All
        # read one radius; once their union holds `limit`, nobody outside is nearer.
        r = min(FIRST_SEARCH_RADIUS_M, radius_m)
        while True:
            found = await self._every_shard(functools.partial(one, radius=r, first=r))
            hits = sorted((hit for shard in found for hit in shard), key=lambda h: h.distance_m)
            if len(hits) >= limit or r >= radius_m:
                return hits[:limit]
            r = min(r * 2, radius_m)

    async def nearest_many(
        self, searches: Sequence[Search], *, now_ms: int, stale_ms: int
    ) -> list[list[NearbyHit]]:
        """:meth:`nearest` of each search, in order, as of the same ``now_ms``.

        One Valkey with one shard: one pipeline of one script per search, so one round trip
        for all of them (each search is atomic on its own, not the batch: a driver may move
        between two of them, as between two NearestDrivers calls). Otherwise each search is
        :meth:`nearest`, side by side (see :meth:`_one_node`)."""
        if not searches:
            return []
        node = self._one_node() if self._shards == 1 else None
        if node is None:
            # A search asks every shard at once: fewer searches side by side than holds.
            each = functools.partial(self.nearest, now_ms=now_ms, stale_ms=stale_ms)
            return await _side_by_side(
                [functools.partial(each, s) for s in searches],
                limit=max(1, _IN_FLIGHT // self._shards),
            )
        calls = [
            self._nearest_call(
                0,
                s,
                radius=s.radius_m,
                first=FIRST_SEARCH_RADIUS_M,
                now_ms=now_ms,
                stale_ms=stale_ms,
            )
            for s in searches
        ]
        replies = await _pipelined(node, self._nearest, calls)
        return [_hits(s, rows) for s, rows in zip(searches, replies, strict=True)]

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
        more matched than ``limit`` (in any shard, or in all of them together)."""

        def search(shard: int) -> Awaitable[list[Any]]:
            sp = self._sp[shard]
            return self._in_area(
                keys=[sp + "seen", sp + "geo:all"],
                args=[sp, now_ms, stale_ms, centre[1], centre[0], *size_m, limit],
            )

        replies = await self._every_shard(search)
        positions = []
        truncated = False
        for more, rows in replies:
            truncated = truncated or bool(more)
            positions += [
                unpack(driver_id.decode(), packed, int(a), int(c))
                for driver_id, packed, a, c in rows
            ]
        return positions[:limit], truncated or len(positions) > limit

    async def sweep_stale(self, *, cutoff_ms: int, batch: int = 1_000) -> int:
        """Remove drivers last seen at or before ``cutoff_ms`` from the GEO sets."""
        removed = 0
        for shard in range(self._shards):
            while True:
                count = int(await self._sweep(keys=self._fixed[shard], args=[cutoff_ms, batch]))
                removed += count
                if count < batch:
                    break
        return removed

    async def release_held(self, *, cutoff_ms: int, batch: int = 1_000) -> int:
        """Make drivers held OFFERED since ``cutoff_ms`` or earlier AVAILABLE again."""
        released = 0
        for shard in range(self._shards):
            released += int(
                await self._release_held(
                    keys=self._fixed[shard], args=[self._sp[shard], cutoff_ms, batch]
                )
            )
        return released

    async def claim_event(self, consumer: str, event_id: str, *, ttl_s: int = 7 * 86_400) -> bool:
        """Idempotency guard for consumed events: True the first time an id is seen."""
        key = f"{self._prefix}evt:{consumer}:{event_id}"
        return bool(await self._redis.set(key, 1, nx=True, ex=ttl_s))

    async def forget_event(self, consumer: str, event_id: str) -> None:
        """Undo claim_event when handling failed, so a redelivery is processed."""
        await self._redis.delete(f"{self._prefix}evt:{consumer}:{event_id}")
