"""gRPC servicer of rideshare.rider.v1.RiderService: request -> domain -> response, via wire.

Handlers raise domain errors; the server's interceptor gives each its status from ERRORS.
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

__all__ = ["ERRORS", "RiderServicer"]

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
        return wire.rider_to_proto(await self._store.get(wire.rider_id_of(request)))

    async def UpdateRider(
        self, request: rider_pb2.UpdateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        changes = wire.rider_changes_from_proto(request)
        return wire.rider_to_proto(await self._commands.update(wire.rider_id_of(request), changes))

    async def Authenticate(
        self, request: rider_pb2.AuthenticateRequest, context: Context
    ) -> rider_pb2.AuthenticateResponse:
        rider_id = await self._commands.authenticate(request.phone, request.password)
        return rider_pb2.AuthenticateResponse(rider_id=rider_id)

    async def ListTrips(
        self, request: rider_pb2.ListTripsRequest, context: Context
    ) -> rider_pb2.ListTripsResponse:
        page = wire.trips_page_from_proto(request)
        await self._store.get(request.rider_id)  # NOT_FOUND for an unknown rider
        trips = await self._store.list_trips(request.rider_id, page)
        return wire.list_trips_response(request.rider_id, page, trips)
