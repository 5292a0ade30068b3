"""The sweeper: ends or re-dispatches live trips whose clock ran out (``trip/liveness.py``).

It runs in one copy of the trip service at a time (a leader lease, rideshare/leader.py: each
round costs a ``GetPosition`` per ride in progress, which more copies would only repeat), and
keeps no state of its own: every clock starts at a timestamp in the trip's row, and the
driver's last position is asked of the location service each round, so a restart, a new
leader or a second copy running it during a lease handover loses nothing and changes
nothing. Each round:

1. lists the live trips that may be due (``TripStore.due_for_sweep``, no locks held);
2. for a trip with a driver, asks the location service when it last had a position from them
   (``GetPosition``, with the client's deadline), outside any transaction;
3. decides and acts in one version-checked transaction (``TripCommands.enforce_clocks``). Two
   copies that both act on a trip conflict on the version; the loser starts over on the
   trip as it has become, and the rules then find nothing due (or the next thing due).

Silence compares the location service's clock (when it accepted the last position) with this
service's; hosts are expected to be NTP-synchronised, far inside the limits (a minute).

Every round looks at every trip that may be due, a page at a time; a ride in progress past
the flag limit is due every round, so a round costs one ``GetPosition`` per such ride.

A location service that cannot answer is not a silent driver: its error is logged and the
trip is judged without a position this round (only the rules that need none apply), so an
outage of location never reassigns anyone. Neither does a driver location has no position
for (it may have restarted empty and be filling up again): "unknown" is not "silent".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias

import grpc

from protos.location.v1 import location_pb2, location_pb2_grpc
from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_client import make_channel
from rideshare.grpc_errors import log_round_failure
from rideshare.identity import TokenSigner
from trip import liveness, wire
from trip.commands import TripCommands
from trip.liveness import Heard
from trip.settings import TripSettings
from trip.store import TripStore

__all__ = ["PositionClient", "Sweeper"]

logger = logging.getLogger(__name__)

LocationStub: TypeAlias = "location_pb2_grpc.LocationServiceAsyncStub"

_GET_POSITION = "rideshare.location.v1.LocationService/GetPosition"


def utcnow() -> datetime:
    return datetime.now(UTC)


class PositionClient:
    """Asks the location service when it last heard from a driver; every call has a deadline."""

    def __init__(
        self, target: str, *, timeout_s: float = 1.0, signer: TokenSigner | None = None
    ) -> None:
        self._channel = make_channel(
            target, idempotent_methods=[_GET_POSITION], default_timeout_s=timeout_s, signer=signer
        )
        self._stub: LocationStub = location_pb2_grpc.LocationServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def last_position_at(self, driver_id: str) -> datetime | None:
        """When the location service accepted the driver's latest position (its clock); None
        when it has none. Other errors (unreachable, deadline) are raised."""
        try:
            reply = await self._stub.GetPosition(
                location_pb2.GetPositionRequest(driver_id=driver_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return wire.position_time_from_proto(reply)


class Sweeper:
    """Applies the live states' clocks; see the module docstring."""

    def __init__(
        self,
        store: TripStore,
        commands: TripCommands,
        positions: PositionClient,
        settings: TripSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._commands = commands
        self._positions = positions
        self._settings = settings
        self._policy = settings.liveness()
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_poll_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.sweep_once()
            except Exception as exc:
                reraise_if_cancelling()
                log_round_failure(logger, "trip sweep failed", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.sweep_poll_s):
                    await stop.wait()

    async def sweep_once(self) -> int:
        """One round over every trip that may be due, a page at a time (so the oldest never
        starve the others); returns how many were looked at."""
        concurrency = self._settings.sweep_concurrency
        page_size = 16 * concurrency
        bounds = liveness.cutoffs(self._clock(), self._policy)
        slots = asyncio.Semaphore(concurrency)
        seen = 0
        after: tuple[datetime, str] | None = None

        async def check(trip_id: str, driver_id: str | None) -> None:
            async with slots:
                try:
                    heard = await self._ask(driver_id) if driver_id else None
                    await self._commands.enforce_clocks(trip_id, heard=heard)
                except Exception:
                    reraise_if_cancelling()
                    # The trip stays due; the next round looks at it again.
                    logger.exception("sweep of trip %s failed; will retry", trip_id)

        while True:
            page = await self._store.due_for_sweep(bounds, after=after, limit=page_size)
            async with asyncio.TaskGroup() as group:
                for trip_id, driver_id, _requested_at in page:
                    group.create_task(check(trip_id, driver_id))
            seen += len(page)
            if len(page) < page_size:
                return seen
            after = (page[-1][2], page[-1][0])

    async def _ask(self, driver_id: str) -> Heard | None:
        try:
            at = await self._positions.last_position_at(driver_id)
        except Exception as exc:
            reraise_if_cancelling()
            logger.warning(
                "no position answer for driver %s (%r); silence rules skipped this round",
                driver_id,
                exc,
            )
            return None
        return Heard(driver_id, at) if at is not None else None
