"""gRPC servicer of rideshare.rider.v1.RiderService: request -> domain -> response, via wire.

Handlers raise domain errors; the server's interceptor gives each its status from ERRORS, and
lets through only the callers ACCESS names. A call the edge makes for an app user reads or
changes only that user's rider (another rider's is NOT_FOUND, as if it did not exist).
"""

from __future__ import annotations

from typing import Any

import grpc

from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from rider import wire
from rider.commands import RiderCommands
from rider.domain import (
    BadCredentialsError,
    InvalidRiderError,
    PhoneTakenError,
    RiderNotFoundError,
)
from rider.store import RiderStore
from rideshare.credentials import HasherBusyError
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable
from rideshare.identity import AccessTable, access_table, allow, may_read

__all__ = ["ACCESS", "ERRORS", "RiderServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidRiderError: grpc.StatusCode.INVALID_ARGUMENT,
    RiderNotFoundError: grpc.StatusCode.NOT_FOUND,
    PhoneTakenError: grpc.StatusCode.ALREADY_EXISTS,
    BadCredentialsError: grpc.StatusCode.UNAUTHENTICATED,
    # Alive but at its KDF capacity: retry later (429), never UNAVAILABLE, which would count
    # against the edge's circuit breaker for every call of the service.
    HasherBusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

ACCESS: AccessTable = access_table(
    rider_pb2.DESCRIPTOR.services_by_name["RiderService"],
    {
        # Sign-up and login come before there is a user: the edge calls as itself.
        "CreateRider": allow("edge"),
        "Authenticate": allow("edge"),
        "GetRider": allow(users=("rider", "admin")),
        "UpdateRider": allow(users=("rider",)),
        "ListTrips": allow(users=("rider", "admin")),
    },
)
"""Who may call each method (rideshare.identity); the operator may call every one."""


def _readable(rider_id: str) -> str:
    """``rider_id`` if the call may read that rider; else NOT_FOUND, as for a missing one."""
    if not may_read("rider", rider_id):
        raise RiderNotFoundError(f"no rider {rider_id!r}")
    return rider_id


class RiderServicer(rider_pb2_grpc.RiderServiceServicer):
    """Rider accounts and their trip history."""

    def __init__(self, commands: RiderCommands, store: RiderStore) -> None:
        self._commands = commands
        self._store = store

    async def CreateRider(
        self, request: rider_pb2.CreateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        rider = await self._commands.sign_up(wire.new_rider_from_proto(request))
        return wire.rider_to_proto(rider)

    async def GetRider(
        self, request: rider_pb2.GetRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        return wire.rider_to_proto(await self._store.get(_readable(wire.rider_id_of(request))))

    async def UpdateRider(
        self, request: rider_pb2.UpdateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        changes = wire.rider_changes_from_proto(request)
        rider_id = _readable(
            wire.rider_id_of(request)
        )  # UpdateRider is for the rider alone (ACCESS)
        return wire.rider_to_proto(await self._commands.update(rider_id, changes))

    async def Authenticate(
        self, request: rider_pb2.AuthenticateRequest, context: Context
    ) -> rider_pb2.AuthenticateResponse:
        rider_id = await self._commands.authenticate(request.phone, request.password)
        return rider_pb2.AuthenticateResponse(rider_id=rider_id)

    async def ListTrips(
        self, request: rider_pb2.ListTripsRequest, context: Context
    ) -> rider_pb2.ListTripsResponse:
        page = wire.trips_page_from_proto(request)
        await self._store.get(_readable(request.rider_id))  # NOT_FOUND for an unknown rider
        trips = await self._store.list_trips(request.rider_id, page)
        return wire.list_trips_response(request.rider_id, page, trips)
