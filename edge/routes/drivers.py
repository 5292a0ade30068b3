"""The driver's own routes: vehicles, going online/offline, a single position update."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body

from edge import convert
from edge.deps import Ctx, Driver
from edge.errors import ApiError
from edge.models import (
    AddVehicleIn,
    DriverOut,
    GoOnlineIn,
    PositionIn,
    PositionResultOut,
    VehicleOut,
)
from edge.routes.common import ERRORS
from protos.driver.v1 import driver_pb2
from protos.location.v1 import location_pb2

router = APIRouter(prefix="/v1/drivers/me", tags=["driver"], responses=ERRORS)


@router.get("", response_model=DriverOut)
async def me(driver: Driver, ctx: Ctx) -> DriverOut:
    """The calling driver with vehicles and status."""
    d = await ctx.driver.GetDriver(driver_pb2.GetDriverRequest(driver_id=driver.sub))
    return convert.driver_out(d)


@router.post("/vehicles", status_code=201, response_model=VehicleOut)
async def add_vehicle(body: AddVehicleIn, driver: Driver, ctx: Ctx) -> VehicleOut:
    """Register a vehicle."""
    v = await ctx.driver.AddVehicle(
        driver_pb2.AddVehicleRequest(
            driver_id=driver.sub,
            make=body.make,
            model=body.model,
            plate=body.plate,
            seats=body.seats,
            vehicle_class=convert.VEHICLE_CLASSES[body.vehicle_class],
        ),
    )
    return VehicleOut(
        id=v.id,
        make=v.make,
        model=v.model,
        plate=v.plate,
        seats=v.seats,
        vehicle_class=body.vehicle_class,
    )


@router.post("/online", response_model=DriverOut)
async def go_online(
    driver: Driver, ctx: Ctx, body: Annotated[GoOnlineIn | None, Body()] = None
) -> DriverOut:
    """Go online with a vehicle (default: the newest) and become available for offers."""
    vehicle_id = body.vehicle_id if body is not None else None
    if vehicle_id is None:
        d = await ctx.driver.GetDriver(driver_pb2.GetDriverRequest(driver_id=driver.sub))
        if not d.vehicles:
            raise ApiError(409, "failed_precondition", "register a vehicle first")
        vehicle_id = d.vehicles[-1].id
    d = await ctx.driver.GoOnline(
        driver_pb2.GoOnlineRequest(driver_id=driver.sub, vehicle_id=vehicle_id)
    )
    return convert.driver_out(d)


@router.post("/offline", response_model=DriverOut)
async def go_offline(driver: Driver, ctx: Ctx) -> DriverOut:
    """Stop receiving offers."""
    d = await ctx.driver.GoOffline(driver_pb2.GoOfflineRequest(driver_id=driver.sub))
    return convert.driver_out(d)


@router.post("/position", response_model=PositionResultOut)
async def report_position(body: PositionIn, driver: Driver, ctx: Ctx) -> PositionResultOut:
    """One position update (the WebSocket is the normal path for a stream of them)."""
    now_ms = time.time_ns() // 1_000_000
    result = await ctx.location.ReportPosition(
        location_pb2.PositionUpdate(
            driver_id=driver.sub,
            lat=body.lat,
            lng=body.lng,
            heading=body.heading,
            speed_mps=body.speed_mps,
            accuracy_m=body.accuracy_m,
            client_ts_ms=body.ts_ms if body.ts_ms is not None else now_ms,
        ),
    )
    return PositionResultOut(
        accepted=result.accepted,
        reason=convert.reject_name(result.reason),
        server_ts_ms=result.server_ts_ms,
    )
