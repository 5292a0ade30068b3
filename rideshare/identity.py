"""Who is calling a gRPC service: signed service tokens, the acting user, per-method access.

Every call between the processes of an install carries ``authorization: Bearer <token>``: a
JWT (HS256) signed with the install's internal secret (``RIDESHARE_INTERNAL_SECRET``, else
``<data dir>/internal-secret``, created 0600 on first use; never the edge's JWT secret, which
signs the apps' tokens), whose subject names the calling service: one of :data:`SERVICES`,
or ``operator`` for a person with grpcurl (``rideshare token --grpc``).

A call the edge makes for an app user also carries ``x-acting-user: <role>:<id>``: the user
whose app token the edge verified. Only :data:`ACTING_SERVICES` (the edge, an operator) may
send it; any other service sending it is refused. The header is not signed on its own: it is
exactly as trustworthy as the service token beside it, since the edge may act for anyone.

Client side: :class:`TokenSigner` mints the process's token once and again shortly before it
expires (``rideshare.grpc_client`` adds it, and the acting user from :data:`acting_user_var`,
to every call). Server side: :class:`TokenVerifier` checks a token once and then answers from
a cache until it expires, so a call costs a dictionary lookup, not a signature check;
``rideshare.grpc_server`` refuses a call without a valid identity (UNAUTHENTICATED) or whose
caller the method's :class:`Allow` rule does not name (PERMISSION_DENIED), and puts the
:class:`Caller` in :data:`caller_var` for the handler, which checks request fields that name
a user (``rider_id``, ``actor_id`` ...) against it with :func:`require_acting_as` and
:func:`may_read`.

Tokens are bearer tokens and the channels are plaintext: whoever can read the traffic can
replay a token until it expires (an hour). Between hosts, run the services on a private
network (or behind TLS); on one host, only root can read loopback traffic.

The trust boundary this draws: whoever can reach a port but does not hold the internal secret
can call nothing but health and reflection. Every process of the install holds the one
secret, so service names bound what each service's code is allowed to do (a bug in one
cannot call another's commands), not what a process that stole the secret could do.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import jwt
from google.protobuf.descriptor import ServiceDescriptor

from rideshare.settings import (
    INTERNAL_SECRET_ENV,
    INTERNAL_SECRET_FILE,
    load_internal_secret,
    process_secret,
)

__all__ = [
    "ACTING_SERVICES",
    "ACTING_USER_METADATA_KEY",
    "AUTH_METADATA_KEY",
    "INTERNAL_SECRET_ENV",
    "INTERNAL_SECRET_FILE",
    "OPERATOR",
    "ROLES",
    "SERVICES",
    "AccessTable",
    "Allow",
    "Caller",
    "IdentityError",
    "NotActingAsError",
    "Role",
    "TokenSigner",
    "TokenVerifier",
    "User",
    "access_table",
    "acting_as",
    "acting_user_var",
    "allow",
    "caller_var",
    "current_user",
    "default_signer",
    "is_admin_call",
    "load_internal_secret",
    "may_read",
    "mint_token",
    "process_secret",
    "require_acting_as",
]

Role = Literal["rider", "driver", "admin"]
ROLES: Final[tuple[Role, ...]] = ("rider", "driver", "admin")
OPERATOR: Final = "operator"
SERVICES: Final = ("edge", "rider", "driver", "trip", "location", "notification", OPERATOR)
# Callers that may act for an app user (send x-acting-user).
ACTING_SERVICES: Final = frozenset({"edge", OPERATOR})

AUTH_METADATA_KEY: Final = "authorization"
ACTING_USER_METADATA_KEY: Final = "x-acting-user"

ALGORITHM: Final = "HS256"
ISSUER: Final = "rideshare"
AUDIENCE: Final = "rideshare-internal"
TOKEN_TTL_S: Final = 3600
# Clocks of the processes of one install may differ a little (several hosts).
LEEWAY_S: Final = 30
_MAX_USER_ID_LEN = 128
_BEARER = "Bearer "


class IdentityError(Exception):
    """A token or acting-user header that does not verify: the call is UNAUTHENTICATED. The
    message never says which signature or claim check failed, beyond expiry."""


class NotActingAsError(Exception):
    """The request names a user other than the one the call acts for (PERMISSION_DENIED)."""


@dataclass(frozen=True, slots=True)
class User:
    """An app user the edge (or an operator) acts for."""

    role: Role
    id: str

    @property
    def header(self) -> str:
        return f"{self.role}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> User:
        """The user of an ``x-acting-user`` value (``rider:<id>``); IdentityError if bad."""
        role, sep, user_id = text.partition(":")
        if (
            not sep
            or role not in ROLES
            or not user_id
            or len(user_id) > _MAX_USER_ID_LEN
            or not user_id.isprintable()
        ):
            raise IdentityError("invalid acting user")
        return cls(role, user_id)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: a service (or ``operator``), acting for ``user`` or for itself."""

    service: str
    user: User | None = None


# Server side: the caller of the call being handled (set by rideshare.grpc_server).
caller_var: ContextVar[Caller | None] = ContextVar("rideshare_caller", default=None)
# Client side: the app user the current task acts for (the edge sets it per request).
acting_user_var: ContextVar[User | None] = ContextVar("rideshare_acting_user", default=None)


@contextlib.contextmanager
def acting_as(user: User | None) -> Iterator[None]:
    """Calls made inside the block act for ``user`` (None: for the calling service itself)."""
    token = acting_user_var.set(user)
    try:
        yield
    finally:
        acting_user_var.reset(token)


# --- the secret ----------------------------------------------------------------------------


@functools.cache
def default_signer() -> TokenSigner:
    """What a channel built without a signer presents: ``operator`` with the process's
    secret. Tools run by a person (scripts, benches, tests) call as the operator; services
    pass their own signer."""
    return TokenSigner(process_secret(), OPERATOR)


# --- tokens ----------------------------------------------------------------------------------


def mint_token(
    secret: str, *, service: str, ttl_s: int = TOKEN_TTL_S, now: float | None = None
) -> str:
    """A service token for ``service`` (one of :data:`SERVICES`), valid ``ttl_s`` seconds."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": service,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class TokenSigner:
    """The token one process presents as ``service``: minted once, minted again when a
    quarter of its life is left, so a call never carries one about to expire."""

    def __init__(
        self, secret: str, service: str, *, ttl_s: int = TOKEN_TTL_S, clock: Any = time.time
    ) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._bearer = ""
        self._renew_at = float("-inf")

    def __repr__(self) -> str:
        return f"TokenSigner(service={self.service!r})"

    @property
    def bearer(self) -> str:
        """``Bearer <token>``: the value of the ``authorization`` metadata."""
        now = self._clock()
        if now >= self._renew_at:
            token = mint_token(self._secret, service=self.service, ttl_s=self._ttl_s, now=now)
            self._bearer = _BEARER + token
            self._renew_at = now + self._ttl_s * 0.75
        return self._bearer


@dataclass
class TokenVerifier:
    """Checks service tokens, each once: a valid one is kept (at most ``cache_size``) with
    its expiry, and answered from the cache until then. The callers built from a service and
    an acting user are kept too (at most ``callers_size``), so a call with a known token and
    a known user costs two dictionary lookups."""

    secret: str = field(repr=False)
    cache_size: int = 1024
    callers_size: int = 16_384
    clock: Any = field(default=time.time, repr=False)
    _cache: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _callers: dict[tuple[str, str | None], Caller] = field(default_factory=dict, repr=False)

    def service_of(self, token: str) -> str:
        """The service a valid token names; IdentityError otherwise."""
        hit = self._cache.get(token)
        if hit is not None:
            if self.clock() < hit[1] + LEEWAY_S:
                return hit[0]
            del self._cache[token]
        service, expires = self._verify(token)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # tokens live an hour; a burst of new ones costs one check each
        self._cache[token] = (service, expires)
        return service

    def _verify(self, token: str) -> tuple[str, float]:
        try:
            # Expiry is checked below against this verifier's clock, as the cache checks it.
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                audience=AUDIENCE,
                options={
                    "require": ["iss", "aud", "sub", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            raise IdentityError("invalid service token") from None
        service, expires = claims.get("sub"), claims.get("exp")
        if service not in SERVICES or not isinstance(expires, int):
            raise IdentityError("invalid service token")
        if self.clock() >= expires + LEEWAY_S:
            raise IdentityError("service token expired")
        return cast(str, service), float(expires)

    def caller(self, authorization: str | None, acting_user: str | None) -> Caller:
        """The caller of a call from its ``authorization`` and ``x-acting-user`` metadata;
        IdentityError when the token is missing or invalid, or the caller may not act for
        users and says it does."""
        if not authorization:
            raise IdentityError("no service token: send authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise IdentityError("invalid service token")
        service = self.service_of(token.strip())
        key = (service, acting_user)
        caller = self._callers.get(key)
        if caller is not None:
            return caller
        if acting_user is None:
            caller = Caller(service)
        elif service not in ACTING_SERVICES:
            raise IdentityError(f"{service} may not act for a user")
        else:
            caller = Caller(service, User.parse(acting_user))
        if len(self._callers) >= self.callers_size:
            self._callers.clear()  # a rebuild costs a parse per user, never a signature check
        self._callers[key] = caller
        return caller


# --- access rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allow:
    """Who may call one method: ``services`` calling as themselves, and the edge or an
    operator acting for a user whose role is in ``users``. An operator calling as itself may
    call every method a table names (``operator``)."""

    services: frozenset[str] = frozenset()
    users: frozenset[Role] = frozenset()
    operator: bool = True

    def permits(self, caller: Caller) -> bool:
        if caller.user is not None:
            return caller.user.role in self.users
        return (self.operator and caller.service == OPERATOR) or caller.service in self.services

    def describe(self) -> str:
        parts = sorted(self.services) + [f"{role} (via edge)" for role in sorted(self.users)]
        return ", ".join(parts) or "the operator only"


def allow(*services: str, users: Iterable[Role] = ()) -> Allow:
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise ValueError(f"unknown services {unknown}")
    return Allow(frozenset(services), frozenset(users))


AccessTable = Mapping[str, Allow]
"""Full method path (``/package.Service/Method``) -> who may call it."""


def access_table(service: ServiceDescriptor, rules: Mapping[str, Allow]) -> AccessTable:
    """A service's table from its rules by method name; ValueError unless the rules name
    every method of ``service`` and nothing else (a new method must be decided on)."""
    methods = {m.name for m in service.methods}
    missing, extra = sorted(methods - set(rules)), sorted(set(rules) - methods)
    if missing or extra:
        raise ValueError(f"access rules of {service.full_name}: missing {missing}, unknown {extra}")
    return {f"/{service.full_name}/{name}": rule for name, rule in rules.items()}


# --- checks in handlers ----------------------------------------------------------------------


def current_user() -> User | None:
    """The user the call being handled acts for; None for a service calling as itself."""
    caller = caller_var.get()
    return None if caller is None else caller.user


def may_read(role: Role, user_id: str) -> bool:
    """Whether the current call may read what belongs to ``user_id`` in ``role``: a service
    calling as itself, that very user, or an admin."""
    user = current_user()
    return user is None or user.role == "admin" or (user.role == role and user.id == user_id)


def require_acting_as(user_id: str, *, role: Role | None = None, field: str) -> None:
    """NotActingAsError unless the current call acts for ``user_id`` (in ``role``, when
    given) or for no user (a service calling as itself, which the access table vetted)."""
    user = current_user()
    if user is not None and (user.id != user_id or (role is not None and user.role != role)):
        raise NotActingAsError(f"{field} must be the acting {user.role}'s id")


def is_admin_call() -> bool:
    """Whether the current call may act as an admin: an admin user, or the operator itself."""
    caller = caller_var.get()
    if caller is None:
        return False
    if caller.user is None:
        return caller.service == OPERATOR
    return caller.user.role == "admin"
