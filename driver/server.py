"""gRPC servicer of rideshare.driver.v1.DriverService: proto <-> domain, errors -> codes."""

from __future__ import annotations

from typing import Any

import grpc

from driver import domain
from driver.domain import (
    BadCredentialsError,
    Driver,
    DriverError,
    DriverNotFoundError,
    InvalidDriverError,
    NoVehicleError,
    OnTripError,
    PhoneTakenError,
    PlateTakenError,
    Vehicle,
    VehicleNotOwnedError,
)
from driver.store import DriverStore
from protos.driver.v1 import driver_pb2, driver_pb2_grpc
from rideshare.credentials import HasherBusyError, PasswordHasher
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable, abort_with

__all__ = ["DriverServicer"]

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


def vehicle_to_proto(vehicle: Vehicle) -> driver_pb2.Vehicle:
    message = driver_pb2.Vehicle(
        id=vehicle.id,
        driver_id=vehicle.driver_id,
        make=vehicle.make,
        model=vehicle.model,
        plate=vehicle.plate,
        seats=vehicle.seats,
        vehicle_class=int(vehicle.vehicle_class),  # type: ignore[arg-type]
    )
    message.created_at.FromDatetime(vehicle.created_at)
    return message


def driver_to_proto(driver: Driver) -> driver_pb2.Driver:
    message = driver_pb2.Driver(
        id=driver.id,
        name=driver.name,
        phone=driver.phone,
        license_number=driver.license_number,
        status=int(driver.status),  # type: ignore[arg-type]
        active_vehicle_id=driver.active_vehicle_id,
        current_trip_id=driver.current_trip_id,
        vehicles=[vehicle_to_proto(v) for v in driver.vehicles],
        rating_avg=driver.rating_avg,
        rating_count=driver.rating_count,
    )
    message.created_at.FromDatetime(driver.created_at)
    return message


class DriverServicer(driver_pb2_grpc.DriverServiceServicer):
    """Driver accounts, vehicles and online status; the KDF runs in the bounded PasswordHasher."""

    def __init__(self, store: DriverStore, hasher: PasswordHasher) -> None:
        self._store = store
        self._hasher = hasher

    async def CreateDriver(
        self, request: driver_pb2.CreateDriverRequest, context: Context
    ) -> driver_pb2.Driver:
        try:
            new = domain.new_driver(
                name=request.name,
                phone=request.phone,
                password=request.password,
                license_number=request.license_number,
            )
            password_hash = await self._hasher.hash(new.password)
            driver = await self._store.create(new, password_hash=password_hash)
        except (DriverError, HasherBusyError) as exc:
            await abort_with(context, exc, ERRORS)
        return driver_to_proto(driver)

    async def AddVehicle(
        self, request: driver_pb2.AddVehicleRequest, context: Context
    ) -> driver_pb2.Vehicle:
        try:
            vehicle = domain.new_vehicle(
                make=request.make,
                model=request.model,
                plate=request.plate,
                seats=request.seats,
                vehicle_class=request.vehicle_class,
            )
            added = await self._store.add_vehicle(request.driver_id, vehicle)
        except DriverError as exc:
            await abort_with(context, exc, ERRORS)
        return vehicle_to_proto(added)

    async def GetDriver(
        self, request: driver_pb2.GetDriverRequest, context: Context
    ) -> driver_pb2.Driver:
        try:
            driver = await self._store.get(request.driver_id)
        except DriverError as exc:
            await abort_with(context, exc, ERRORS)
        return driver_to_proto(driver)

    async def Authenticate(
        self, request: driver_pb2.AuthenticateRequest, context: Context
    ) -> driver_pb2.AuthenticateResponse:
        # Login attempt limits (per phone, per client) go here, before any KDF work.
        try:
            account_id = await self._hasher.authenticate(
                await self._store.password_hash(request.phone), request.password
            )
        except HasherBusyError as exc:
            await abort_with(context, exc, ERRORS)
        if account_id is None:
            await abort_with(context, BadCredentialsError("wrong phone number or password"), ERRORS)
        return driver_pb2.AuthenticateResponse(driver_id=account_id)

    async def GoOnline(
        self, request: driver_pb2.GoOnlineRequest, context: Context
    ) -> driver_pb2.Driver:
        try:
            driver = await self._store.go_online(request.driver_id, request.vehicle_id)
        except DriverError as exc:
            await abort_with(context, exc, ERRORS)
        return driver_to_proto(driver)

    async def GoOffline(
        self, request: driver_pb2.GoOfflineRequest, context: Context
    ) -> driver_pb2.Driver:
        try:
            driver = await self._store.go_offline(request.driver_id)
        except DriverError as exc:
            await abort_with(context, exc, ERRORS)
        return driver_to_proto(driver)

    async def ListOnlineDrivers(
        self, request: driver_pb2.ListOnlineDriversRequest, context: Context
    ) -> driver_pb2.ListOnlineDriversResponse:
        try:
            page = domain.online_page(size=request.page_size, token=request.page_token)
            drivers = await self._store.online_drivers(page)
        except DriverError as exc:
            await abort_with(context, exc, ERRORS)
        return driver_pb2.ListOnlineDriversResponse(
            drivers=[
                driver_pb2.OnlineDriver(
                    driver_id=d.driver_id,
                    vehicle_class=int(d.vehicle_class),  # type: ignore[arg-type]
                )
                for d in drivers[: page.limit]
            ],
            next_page_token=page.next_token(drivers),
        )
