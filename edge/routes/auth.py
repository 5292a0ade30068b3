"""Sign-up and tokens: POST /v1/riders, POST /v1/drivers, POST /v1/auth/token.

Each goes through the edge's login limits (edge/logins.py) before the service hashes a
password: per client address and per phone number, and a lockout after failed logins.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from edge import convert
from edge.auth import issue_token
from edge.deps import Ctx
from edge.errors import ApiError
from edge.models import DriverOut, DriverSignupIn, RiderOut, RiderSignupIn, TokenIn, TokenOut
from edge.routes.common import ERRORS
from protos.driver.v1 import driver_pb2
from protos.rider.v1 import rider_pb2

router = APIRouter(prefix="/v1", tags=["auth"], responses=ERRORS)


def _client(request: Request) -> str:
    """The client's address, as the rate limiter keys it (the middleware has resolved it from
    a trusted proxy's X-Forwarded-For already, edge/clientaddr.py)."""
    return request.client.host if request.client else "unknown"


@router.post("/riders", status_code=201, response_model=RiderOut)
async def create_rider(body: RiderSignupIn, request: Request, ctx: Ctx) -> RiderOut:
    """Sign a rider up; then get a token with POST /v1/auth/token."""
    await ctx.logins.admit_signup("rider", body.phone, _client(request))
    signup = rider_pb2.CreateRiderRequest(name=body.name, phone=body.phone, password=body.password)
    if body.email is not None:
        signup.email = body.email
    rider = await ctx.rider.CreateRider(signup)
    return convert.rider_out(rider)


@router.post("/drivers", status_code=201, response_model=DriverOut)
async def create_driver(body: DriverSignupIn, request: Request, ctx: Ctx) -> DriverOut:
    """Sign a driver up (offline, no vehicle yet)."""
    await ctx.logins.admit_signup("driver", body.phone, _client(request))
    signup = driver_pb2.CreateDriverRequest(
        name=body.name,
        phone=body.phone,
        password=body.password,
        license_number=body.license_number,
    )
    driver = await ctx.driver.CreateDriver(signup)
    return convert.driver_out(driver)


@router.post("/auth/token", response_model=TokenOut)
async def token(body: TokenIn, request: Request, ctx: Ctx) -> TokenOut:
    """Exchange phone + password for a bearer token of the given role."""
    client = _client(request)
    await ctx.logins.admit_login(body.role, body.phone, client)
    try:
        user_id = await _authenticate(body, ctx)
    except ApiError as exc:
        if exc.status == 401:
            await ctx.logins.login_failed(body.role, body.phone, client)
        raise
    await ctx.logins.login_succeeded(body.role, body.phone)
    ttl = ctx.settings.token_ttl_s
    return TokenOut(
        access_token=issue_token(ctx.settings.jwt_secret, sub=user_id, role=body.role, ttl_s=ttl),
        expires_in=ttl,
        user_id=user_id,
        role=body.role,
    )


async def _authenticate(body: TokenIn, ctx: Ctx) -> str:
    """The account id if the service accepts the phone number and password."""
    if body.role == "rider":
        r = await ctx.rider.Authenticate(
            rider_pb2.AuthenticateRequest(phone=body.phone, password=body.password),
        )
        return r.rider_id
    d = await ctx.driver.Authenticate(
        driver_pb2.AuthenticateRequest(phone=body.phone, password=body.password),
    )
    return d.driver_id
