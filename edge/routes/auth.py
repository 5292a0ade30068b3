"""Sign-up and tokens: POST /v1/riders, POST /v1/drivers, POST /v1/auth/token."""

from __future__ import annotations

from fastapi import APIRouter

from edge import convert
from edge.auth import issue_token
from edge.deps import Ctx
from edge.models import DriverOut, DriverSignupIn, RiderOut, RiderSignupIn, TokenIn, TokenOut
from edge.routes.common import ERRORS
from protos.driver.v1 import driver_pb2
from protos.rider.v1 import rider_pb2

router = APIRouter(prefix="/v1", tags=["auth"], responses=ERRORS)


@router.post("/riders", status_code=201, response_model=RiderOut)
async def create_rider(body: RiderSignupIn, ctx: Ctx) -> RiderOut:
    """Sign a rider up; then get a token with POST /v1/auth/token."""
    request = rider_pb2.CreateRiderRequest(name=body.name, phone=body.phone, password=body.password)
    if body.email is not None:
        request.email = body.email
    rider = await ctx.rider.CreateRider(request)
    return convert.rider_out(rider)


@router.post("/drivers", status_code=201, response_model=DriverOut)
async def create_driver(body: DriverSignupIn, ctx: Ctx) -> DriverOut:
    """Sign a driver up (offline, no vehicle yet)."""
    request = driver_pb2.CreateDriverRequest(
        name=body.name,
        phone=body.phone,
        password=body.password,
        license_number=body.license_number,
    )
    driver = await ctx.driver.CreateDriver(request)
    return convert.driver_out(driver)


@router.post("/auth/token", response_model=TokenOut)
async def token(body: TokenIn, ctx: Ctx) -> TokenOut:
    """Exchange phone + password for a bearer token of the given role."""
    if body.role == "rider":
        r = await ctx.rider.Authenticate(
            rider_pb2.AuthenticateRequest(phone=body.phone, password=body.password),
        )
        user_id = r.rider_id
    else:
        d = await ctx.driver.Authenticate(
            driver_pb2.AuthenticateRequest(phone=body.phone, password=body.password),
        )
        user_id = d.driver_id
    ttl = ctx.settings.token_ttl_s
    return TokenOut(
        access_token=issue_token(ctx.settings.jwt_secret, sub=user_id, role=body.role, ttl_s=ttl),
        expires_in=ttl,
        user_id=user_id,
        role=body.role,
    )
