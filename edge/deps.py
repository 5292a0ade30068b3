"""FastAPI dependencies: the edge's context and the caller's verified principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edge.auth import AuthError, Principal, decode_token
from edge.context import EdgeContext
from edge.errors import ApiError
from rideshare.identity import User, acting_user_var

__all__ = ["Admin", "AnyUser", "Ctx", "Driver", "Rider", "RiderOrDriver", "get_ctx", "require"]

_bearer = HTTPBearer(auto_error=False, description="JWT from POST /v1/auth/token")


def get_ctx(request: Request) -> EdgeContext:
    ctx: EdgeContext = request.app.state.ctx
    return ctx


Ctx = Annotated[EdgeContext, Depends(get_ctx)]


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that returns the caller's principal if their role is one of ``roles``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise ApiError(
                401,
                "unauthenticated",
                "missing bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            principal = decode_token(get_ctx(request).settings.jwt_secret, credentials.credentials)
        except AuthError as exc:
            raise ApiError(
                401, "unauthenticated", str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
        if principal.role not in roles:
            raise ApiError(403, "permission_denied", f"this route is for {' or '.join(roles)}s")
        # The route's calls to the services act for this user (rideshare/identity.py); the
        # request's task ends with the request, and with it the value.
        acting_user_var.set(User(principal.role, principal.sub))
        return principal

    return dependency


Rider = Annotated[Principal, Depends(require("rider"))]
Driver = Annotated[Principal, Depends(require("driver"))]
Admin = Annotated[Principal, Depends(require("admin"))]
RiderOrDriver = Annotated[Principal, Depends(require("rider", "driver"))]
AnyUser = Annotated[Principal, Depends(require("rider", "driver", "admin"))]
