"""Which errors are an unreachable server (UNAVAILABLE) and which are a bug (INTERNAL)."""

from __future__ import annotations

import errno
import logging

import asyncpg
import nats.errors
import nats.js.errors
import pytest
import redis.exceptions

from rideshare.grpc_errors import log_round_failure, outage_of


@pytest.mark.parametrize(
    ("exc", "server"),
    [
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), "PostgreSQL"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "PostgreSQL"),
        (asyncpg.TooManyConnectionsError("too many clients"), "PostgreSQL"),
        (asyncpg.AdminShutdownError("terminating connection"), "PostgreSQL"),
        (asyncpg.InterfaceError("connection is closed"), "PostgreSQL"),
        (
            asyncpg.InterfaceError(
                "cannot call Connection.is_closed(): connection has been released back to the pool"
            ),
            "PostgreSQL",
        ),
        (redis.exceptions.ConnectionError("Connection refused"), "Redis"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "Redis"),
        (redis.exceptions.BusyLoadingError("loading"), "Redis"),
        (redis.exceptions.ClusterDownError("The cluster is down"), "Redis"),
        (nats.errors.NoServersError(), "NATS"),
        (nats.errors.ConnectionClosedError(), "NATS"),
        (nats.errors.TimeoutError(), "NATS"),
        (nats.js.errors.NoStreamResponseError(), "NATS"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "a server"),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432)"), "a server"),
        (TimeoutError(), "a server"),
        (ExceptionGroup("workers", [redis.exceptions.ConnectionError("x")]), "Redis"),
    ],
)
def test_an_unreachable_server_is_an_outage_named_for_its_server(
    exc: BaseException, server: str
) -> None:
    assert outage_of(exc) == server


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("boom"),
        KeyError("k"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        FileNotFoundError(errno.ENOENT, "no such file"),
        redis.exceptions.ResponseError("WRONGTYPE"),
        nats.js.errors.NotFoundError(),
        ExceptionGroup("mixed", [nats.errors.NoServersError(), ValueError("bug")]),
    ],
)
def test_a_bug_or_a_refused_request_is_not_an_outage(exc: BaseException) -> None:
    assert outage_of(exc) is None


def test_a_worker_round_lost_to_an_outage_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.worker")
    with caplog.at_level(logging.WARNING, logger="test.worker"):
        log_round_failure(log, "poll failed", redis.exceptions.ConnectionError("refused"))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage() == "poll failed: Redis is unavailable (ConnectionError); retrying"


def test_a_worker_round_lost_to_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.worker")
    with caplog.at_level(logging.WARNING, logger="test.worker"):
        log_round_failure(log, "poll failed", KeyError("oops"))
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.getMessage() == "poll failed; retrying"
