"""gRPC servicer of rideshare.driver.v1.DriverService: request -> domain -> response, via wire.

Handlers raise domain errors; the server's interceptor gives each its status from ERRORS.
"""

from __future__ import annotations

from typing import Any

import grpc

from driver import wire
from driver.commands import DriverCommands
from driver.domain import (
    BadCredentialsError,
    DriverNotFoundError,
    InvalidDriverError,
    NoVehicleError,
    OnTripError,
    PhoneTakenError,
    PlateTakenError,
    VehicleNotOwnedError,
)
from driver.store import DriverStore
from protos.driver.v1 import driver_pb2, driver_pb2_grpc
from rideshare.credentials import HasherBusyError
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable

__all__ = ["ERRORS", "DriverServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidDriverError: grpc.StatusCode.INVALID_ARGUMENT,
    DriverNotFoundError: grpc.StatusCode.NOT_FOUND,
    PhoneTakenError: grpc.StatusCode.ALREADY_EXISTS,
    PlateTakenError: grpc.StatusCode.ALREADY_EXISTS,
    BadCredentialsError: grpc.StatusCode.UNAUTHENTICATED,
    # Alive but at its KDF capacity: retry later (429), never UNAVAILABLE, which would count
    # against the edge's circuit breaker for every call of the service.
    HasherBusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NoVehicleError: grpc.StatusCode.FAILED_PRECONDITION,
    VehicleNotOwnedError: grpc.StatusCode.FAILED_PRECONDITION,
    OnTripError: grpc.StatusCode.FAILED_PRECONDITION,
}


class DriverServicer(driver_pb2_grpc.DriverServiceServicer):
    """Driver accounts, vehicles and online status."""

    def __init__(self, commands: DriverCommands, store: DriverStore) -> None:
        self._commands = commands
        self._store = store

    async def CreateDriver(
        self, request: driver_pb2.CreateDriverRequest, context: Context
    ) -> driver_pb2.Driver:
        driver = await self._commands.sign_up(wire.new_driver_from_proto(request))
        return wire.driver_to_proto(driver)

    async def AddVehicle(
        self, request: driver_pb2.AddVehicleRequest, context: Context
    ) -> driver_pb2.Vehicle:
        new = wire.new_vehicle_from_proto(request)
        driver_id = wire.driver_id_of(request)
        return wire.vehicle_to_proto(await self._commands.add_vehicle(driver_id, new))

    async def GetDriver(
        self, request: driver_pb2.GetDriverRequest, context: Context
    ) -> driver_pb2.Driver:
        return wire.driver_to_proto(await self._store.get(wire.driver_id_of(request)))

    async def Authenticate(
        self, request: driver_pb2.AuthenticateRequest, context: Context
    ) -> driver_pb2.AuthenticateResponse:
        driver_id = await self._commands.authenticate(request.phone, request.password)
        return driver_pb2.AuthenticateResponse(driver_id=driver_id)

    async def GoOnline(
        self, request: driver_pb2.GoOnlineRequest, context: Context
    ) -> driver_pb2.Driver:
        driver_id, vehicle_id = wire.driver_id_of(request), wire.vehicle_id_of(request)
        driver = await self._commands.go_online(driver_id, vehicle_id)
        return wire.driver_to_proto(driver)

    async def GoOffline(
        self, request: driver_pb2.GoOfflineRequest, context: Context
    ) -> driver_pb2.Driver:
        return wire.driver_to_proto(await self._commands.go_offline(wire.driver_id_of(request)))

    async def ListOnlineDrivers(
        self, request: driver_pb2.ListOnlineDriversRequest, context: Context
    ) -> driver_pb2.ListOnlineDriversResponse:
        page = wire.online_page_from_proto(request)
        return wire.online_drivers_response(page, await self._store.online_drivers(page))
