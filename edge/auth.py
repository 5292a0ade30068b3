"""JWT bearer tokens (HS256): ``sub`` is the rider, driver or admin id, ``role`` its kind."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, Literal, cast

import jwt

__all__ = ["ROLES", "AuthError", "Principal", "Role", "decode_token", "issue_token"]

Role = Literal["rider", "driver", "admin"]
ROLES: Final = ("rider", "driver", "admin")
ALGORITHM: Final = "HS256"
ISSUER: Final = "rideshare-edge"


class AuthError(Exception):
    """The token is missing, malformed, expired or not signed by us."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject and role."""

    sub: str
    role: Role


def issue_token(secret: str, *, sub: str, role: Role, ttl_s: int, now: float | None = None) -> str:
    """A signed token for ``sub`` in ``role``, valid for ``ttl_s`` seconds."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "role": role, "iat": issued, "exp": issued + ttl_s, "iss": ISSUER}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(secret: str, token: str) -> Principal:
    """The principal of a valid token; AuthError otherwise (never says which check failed
    beyond expiry, so a forger learns nothing)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["sub", "role", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except (jwt.PyJWTError, UnicodeError):  # a lone surrogate cannot even be encoded
        raise AuthError("invalid token") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub or role not in ROLES:
        raise AuthError("invalid token")
    return Principal(sub=sub, role=cast(Role, role))
