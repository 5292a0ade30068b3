"""Domain error -> gRPC status: each service declares its table (``ERRORS`` in its server.py),
and the server interceptor (grpc_server.py) applies it with :func:`status_of`.

Errors no table knows reach the same interceptor, which asks
:func:`outage_of` whether the error is a server being unreachable (PostgreSQL, Redis or NATS
down, restarting, refusing connections, not answering in time): that is UNAVAILABLE, which
clients retry; anything else is INTERNAL, a bug. This module is the one list of such errors.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping

import asyncpg
import grpc
import nats.errors
import nats.js.errors
import redis.exceptions

__all__ = ["StatusTable", "log_round_failure", "outage_of", "status_of"]

StatusTable = Mapping[type[Exception], grpc.StatusCode]

# Which server an outage error is about, by the client library that raised it.
_SERVER_OF_MODULE = {"asyncpg": "PostgreSQL", "redis": "Redis", "nats": "NATS"}

# Errors that mean "the server is not there right now", never "the request is wrong".
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    # asyncpg: connection lost or refused (class 08), the server shutting down or starting
    # up (class 57: admin/crash shutdown, cannot connect now), too many connections (53300).
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    # redis-py: refused, reset, closed, loading (BusyLoadingError is a ConnectionError).
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Valkey Cluster with a slot nobody serves, while a replica takes over a lost master.
    redis.exceptions.ClusterDownError,
    # nats-py: no server, the connection closed or draining, a request nobody answered.
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    # The socket layer under all three, and any deadline (pool acquire, query, request).
    ConnectionError,
    TimeoutError,
)

# OSError numbers of a network path that does not work right now.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EADDRNOTAVAIL,
    }
)


def outage_of(exc: BaseException) -> str | None:
    """The name of the server ``exc`` says is unreachable ("PostgreSQL", "Redis", "NATS", or
    "a server" when the error does not tell), or None when ``exc`` is not an outage.

    An exception group is an outage when every error in it is one.
    """
    if isinstance(exc, BaseExceptionGroup):
        servers = {outage_of(inner) for inner in exc.exceptions}
        if None in servers:
            return None
        return servers.pop() if len(servers) == 1 else "a server"
    if not _is_outage(exc):
        return None
    return _server_named_by(exc)


def log_round_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """Log one failed round of a background worker that will try again: a one-line warning
    when a server is away (expected while it restarts), the traceback when it is a bug."""
    server = outage_of(exc)
    if server is None:
        log.error("%s; retrying", what, exc_info=exc)
    else:
        log.warning("%s: %s is unavailable (%s); retrying", what, server, type(exc).__name__)


def _server_named_by(exc: BaseException) -> str:
    """The server whose client library raised ``exc``: by the error's class, or, for a
    builtin error (ConnectionRefusedError from a connect), by the innermost library frame
    it passed through."""
    server = _SERVER_OF_MODULE.get(type(exc).__module__.partition(".")[0])
    tb = exc.__traceback__
    while server is None and tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        server = _SERVER_OF_MODULE.get(module)
        tb = tb.tb_next
    return server or "a server"


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # The connection went away under the call: asyncpg says "connection is closed" or,
        # once the pool took a lost connection back, "released back to the pool".
        message = str(exc)
        return "closed" in message or "released back to the pool" in message
    if isinstance(exc, OSError):
        # asyncpg reports a failed connect to several addresses as one plain OSError
        # ("Multiple exceptions: [Errno 111] Connect call failed ...").
        return exc.errno in _NETWORK_ERRNOS or (
            exc.errno is None and "Connect call failed" in str(exc)
        )
    return False


def status_of(exc: BaseException, table: StatusTable) -> grpc.StatusCode | None:
    """The code ``table`` gives ``exc``'s class, or its nearest base in the table; None when
    the table does not know it."""
    for cls in type(exc).__mro__:
        code = table.get(cls)
        if code is not None:
            return code
    return None
