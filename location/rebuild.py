"""Rebuilding availability from the systems of record when Redis comes back empty.

Redis holds nothing that is not rebuilt from elsewhere: after a restart, a failover or a
flush, who is online (and with which vehicle class) is still in the driver service, and who
is on a live trip or holds a pending offer is still in the trip service. Each copy of this
service checks every ``rebuild_check_s`` (and at start) for the marker the last rebuild
wrote; when it is gone, one copy (a lock in Redis) reads both services page by page and
writes every online driver's availability, then writes the marker. Positions are not in any
system of record: a rebuilt driver enters the GEO sets with the next position the phone
sends (every few seconds), or at once if one arrived since the flush.

Ordering against events. Events keep flowing during a rebuild and must win over the older
snapshot. Every snapshot entry is written with the guard the events use: it applies only if
no change newer than the snapshot's time was applied to that driver. The snapshot's time is
taken *before* the reads, less ``SNAPSHOT_GRACE_MS``: an event that happened shortly before
the reads may have committed after them (or be consumed after the snapshot is written), and it
must still apply, while anything older is in the snapshot already. A flush in the middle of
a rebuild takes the lock with it; the rebuild notices (its lock is gone) and starts over.

Failure: if the driver or trip service cannot be read, the lock is dropped, nothing is marked
done, and the rebuild is retried with backoff (0.5 s doubling to 5 s) until they answer.

Why not persist Redis instead (AOF or snapshots)? The embedded Valkey runs with neither
(``rideshare/infra.py``). The index is a cache of facts owned elsewhere: a restored file
would bring back availability as it was when the file was written (drivers who went offline
or took a trip since then shown free), and the rebuild has to work anyway, for a failover to
an empty replica or a lost disk. One mechanism, exercised on every loss, beats two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import grpc
from prometheus_client import Counter, Gauge, Histogram

from location import wire
from location.domain import Availability, snapshot_entries
from location.store import LocationStore
from protos.driver.v1 import driver_pb2, driver_pb2_grpc
from protos.trip.v1 import trip_pb2, trip_pb2_grpc
from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_client import make_channel
from rideshare.identity import TokenSigner

__all__ = ["SNAPSHOT_GRACE_MS", "RecordsClient", "keep_index_built", "rebuild_once"]

logger = logging.getLogger(__name__)

DriverStub: TypeAlias = "driver_pb2_grpc.DriverServiceAsyncStub"
TripStub: TypeAlias = "trip_pb2_grpc.TripServiceAsyncStub"

SNAPSHOT_GRACE_MS = 5_000
LOCK_MS = 30_000  # extended with every page, so only a stuck rebuild loses it
PAGE_SIZE = 1_000
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.5, 5.0
_LIST_ONLINE = "rideshare.driver.v1.DriverService/ListOnlineDrivers"
_LIST_ASSIGNMENTS = "rideshare.trip.v1.TripService/ListActiveAssignments"

REBUILDS = Counter(
    "location_index_rebuilds_total",
    "Rebuilds of the availability index from the driver and trip services, by outcome "
    "(done; failed: a service could not be read; lost: Redis was emptied again meanwhile).",
    ["outcome"],
)
REBUILD_SECONDS = Histogram(
    "location_index_rebuild_seconds",
    "Duration of completed rebuilds of the availability index.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INDEX_BUILT = Gauge(
    "location_index_built",
    "1 when Redis holds a rebuilt availability index (its marker), 0 while it is missing.",
)


class RecordsClient:
    """Reads of the systems of record a rebuild needs, each page under a deadline."""

    def __init__(
        self,
        driver_addr: str,
        trip_addr: str,
        *,
        timeout_s: float,
        signer: TokenSigner | None = None,
    ) -> None:
        self._driver_channel = make_channel(
            driver_addr,
            idempotent_methods=[_LIST_ONLINE],
            default_timeout_s=timeout_s,
            signer=signer,
        )
        self._trip_channel = make_channel(
            trip_addr,
            idempotent_methods=[_LIST_ASSIGNMENTS],
            default_timeout_s=timeout_s,
            signer=signer,
        )
        self._drivers: DriverStub = driver_pb2_grpc.DriverServiceStub(self._driver_channel)
        self._trips: TripStub = trip_pb2_grpc.TripServiceStub(self._trip_channel)

    async def close(self) -> None:
        await self._driver_channel.close(None)
        await self._trip_channel.close(None)

    async def online_drivers(
        self, *, on_page: Callable[[], Awaitable[None]]
    ) -> list[tuple[str, int]]:
        """Every online driver and their vehicle class; ``on_page`` runs after each page."""
        drivers: list[tuple[str, int]] = []
        token = ""
        while True:
            reply = await self._drivers.ListOnlineDrivers(
                driver_pb2.ListOnlineDriversRequest(page_size=PAGE_SIZE, page_token=token)
            )
            drivers += wire.online_drivers_of(reply)
            await on_page()
            token = reply.next_page_token
            if not token:
                return drivers

    async def holds(self, *, on_page: Callable[[], Awaitable[None]]) -> list[tuple[str, str, bool]]:
        """Every driver a live trip holds: (driver id, trip id, offered rather than
        assigned); ``on_page`` runs after each page."""
        holds: list[tuple[str, str, bool]] = []
        token = ""
        while True:
            reply = await self._trips.ListActiveAssignments(
                trip_pb2.ListActiveAssignmentsRequest(page_size=PAGE_SIZE, page_token=token)
            )
            holds += wire.holds_of(reply)
            await on_page()
            token = reply.next_page_token
            if not token:
                return holds


class _LockLostError(Exception):
    """Redis lost the rebuild's lock: it was emptied again while the rebuild ran."""


async def rebuild_once(
    store: LocationStore, records: RecordsClient, *, clock_ms: Callable[[], int]
) -> bool | None:
    """One rebuild: True when done, None when another copy holds the lock, False when Redis
    was emptied again meanwhile (start over). A service that cannot be read raises."""
    token = uuid.uuid4().hex
    if not await store.begin_rebuild(token, lock_ms=LOCK_MS):
        return None
    started = time.monotonic()

    async def keep_lock() -> None:
        if not await store.extend_rebuild(token, lock_ms=LOCK_MS):
            raise _LockLostError

    try:
        at_ms = clock_ms() - SNAPSHOT_GRACE_MS  # before the reads: see the module docstring
        online = await records.online_drivers(on_page=keep_lock)
        held = await records.holds(on_page=keep_lock)
        entries = snapshot_entries(online, held)
        applied = await store.apply_snapshot(entries, at_ms=at_ms, token=token, lock_ms=LOCK_MS)
        if applied is None:
            raise _LockLostError
        info = json.dumps({"at_ms": at_ms, "drivers": len(entries)})
        if not await store.finish_rebuild(token, info=info):
            raise _LockLostError
    except _LockLostError:
        REBUILDS.labels("lost").inc()
        logger.warning("Redis was emptied again during the availability rebuild; restarting")
        return False
    except BaseException:
        try:
            await store.abandon_rebuild(token)
        except Exception as exc:
            # The lock expires by itself (LOCK_MS); the error that ended the rebuild is the
            # one to raise.
            logger.warning("could not drop the rebuild lock (%r); it expires by itself", exc)
        raise
    elapsed = time.monotonic() - started
    REBUILDS.labels("done").inc()
    REBUILD_SECONDS.observe(elapsed)
    logger.warning(
        "availability rebuilt for %d online drivers (%d on trips, %d offered; %d written, "
        "the rest newer from events) in %.3fs",
        len(entries),
        sum(1 for e in entries if e.availability is Availability.ON_TRIP),
        sum(1 for e in entries if e.availability is Availability.OFFERED),
        applied,
        elapsed,
    )
    return True


async def keep_index_built(
    store: LocationStore,
    records: RecordsClient,
    stop: asyncio.Event,
    *,
    check_s: float,
    clock_ms: Callable[[], int],
) -> None:
    """Check for the index marker every ``check_s`` and rebuild when it is gone, retrying
    with backoff while the driver or trip service cannot be read; until ``stop``."""
    backoff = 0.0
    while not stop.is_set():
        wait = check_s
        try:
            built = await store.index_built()
            INDEX_BUILT.set(1 if built else 0)
            if not built:
                logger.warning("availability index missing in Redis; rebuilding")
                outcome = await rebuild_once(store, records, clock_ms=clock_ms)
                if outcome is True:
                    INDEX_BUILT.set(1)
                    backoff = 0.0
                elif outcome is False:
                    wait = 0.0
            else:
                backoff = 0.0
        except Exception as exc:
            reraise_if_cancelling()
            REBUILDS.labels("failed").inc()
            backoff = min(max(_BACKOFF_FIRST_S, backoff * 2), _BACKOFF_MAX_S)
            wait = backoff
            logger.warning("availability rebuild failed (%s); retrying in %.1fs", _brief(exc), wait)
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()


def _brief(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)
