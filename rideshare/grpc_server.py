"""The gRPC server bootstrap every service uses: health, reflection, interceptors, shutdown.

A service's ``app.running()`` gets one from its runtime (rideshare/runtime.py), which fills
in the name, address, readiness and bind retry from the settings::

    server = rt.grpc_server(errors=ERRORS)          # GrpcServer(name, host=, port=, ...)
    trip_pb2_grpc.add_TripServiceServicer_to_server(servicer, server.server)
    server.add_service_name(trip_pb2.DESCRIPTOR.services_by_name["TripService"].full_name)
    async with rt.serving(server):                  # start(); ... stop(shutdown_grace_s)
        ...

What it adds to the plain ``grpc.aio`` server:

- ``grpc.health.v1.Health`` (Check and Watch) for the whole server (``""``) and for every named
  service: SERVING while ``readiness()`` returns within the interval, NOT_SERVING otherwise and
  from the moment shutdown starts. And ``rideshare.liveness``, SERVING from start to shutdown
  whatever the stores do: a liveness probe (Kubernetes, deploy/k8s) asks that name, so a
  service waiting out a lost server is taken out of rotation but not restarted, while one
  that stops answering at all is.
- Server reflection under both ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1``, so
  ``grpcurl -plaintext host:port list`` works with old and new tools.
- Identity (rideshare/identity.py): a call without a valid service token in its
  ``authorization`` metadata is refused with UNAUTHENTICATED, a caller that the method's rule
  in ``access`` does not name with PERMISSION_DENIED, before the handler runs; the handler
  finds the :class:`~rideshare.identity.Caller` in :data:`rideshare.identity.caller_var`.
  Health and reflection stay open to anyone who can connect (load balancers, supervisors and
  ``grpcurl list`` / ``describe`` need no secret; they tell nothing but the service's shape
  and whether it is up). A method that is in no rule of a table is refused to everyone.
- One interceptor, for every RPC kind: the request id from the ``x-request-id`` metadata (or a
  new one) in :data:`rideshare.log.request_id_var`; Prometheus metrics per method and status
  code; an unexpected exception becomes INTERNAL ``internal error (id=<hex>)`` with the traceback
  logged under the same id, except that a server the call needs being unreachable
  (PostgreSQL, Redis, NATS; :func:`rideshare.grpc_errors.outage_of`) is UNAVAILABLE, which
  clients retry; ``context.abort(...)`` passes through untouched.

Handlers must be ``async def`` functions or async generators (the grpc.aio norm); a synchronous
handler is refused (UNIMPLEMENTED), as it could not be guarded.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool

# The public aliases health.aio / reflection.aio are these modules; grpc-stubs lacks them.
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from rideshare.grpc_errors import StatusTable, outage_of, status_of
from rideshare.identity import (
    ACTING_USER_METADATA_KEY,
    AUTH_METADATA_KEY,
    AccessTable,
    Allow,
    Caller,
    IdentityError,
    NotActingAsError,
    TokenVerifier,
    caller_var,
    process_secret,
)
from rideshare.keepalive import DEFAULT_KEEPALIVE, Keepalive
from rideshare.log import REQUEST_ID_METADATA_KEY, new_request_id, request_id_var
from rideshare.metrics import GRPC_SERVER_HANDLED, GRPC_SERVER_HANDLING_SECONDS
from rideshare.ports import RETRY_EVERY_S, port_in_use_error, wait_for_port
from rideshare.settings import BIND_RETRY_S

__all__ = ["LIVENESS_SERVICE_NAME", "GrpcServer"]

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
# Health name that answers SERVING while the process answers at all (the module doc says why).
LIVENESS_SERVICE_NAME = "rideshare.liveness"
REFLECTION_V1ALPHA_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
# Open to any caller, with or without an identity (see the module doc).
OPEN_SERVICES = frozenset(
    {HEALTH_SERVICE_NAME, REFLECTION_V1ALPHA_SERVICE_NAME, REFLECTION_V1_SERVICE_NAME}
)
# Errors every service answers alike, whatever its own table says.
_SHARED_ERRORS: StatusTable = {NotActingAsError: grpc.StatusCode.PERMISSION_DENIED}

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Never lets a second process silently share our port (gRPC's Linux default is to allow it).
# The ping policy comes from rideshare/keepalive.py, with the clients' keepalive.
_SERVER_OPTIONS: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]

_MAX_REQUEST_ID_LEN = 128

if TYPE_CHECKING:
    _ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptorBase = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


class GrpcServer:
    """A ``grpc.aio`` server with health, reflection, interceptors and graceful shutdown.

    Build it inside the running event loop, add servicers to :attr:`server` and name their
    services with :meth:`add_service_name`, then :meth:`start`. ``readiness`` is awaited every
    ``health_interval_s`` (and at start) with that same timeout; it raises when a store the
    service needs is unreachable. Usable as ``async with GrpcServer(...) as srv``, which stops
    with a 5 s grace. A taken ``port`` is retried for ``bind_retry_s`` (rideshare/ports.py).
    ``errors`` is the service's table of domain error -> status code, ``access`` its table of
    who may call each method (without one, any caller with a valid identity may call any
    method), ``secret`` the internal secret tokens are checked with (default: the process's,
    :func:`rideshare.identity.process_secret`), ``keepalive`` the ping policy its clients
    share (rideshare/keepalive.py).
    """

    def __init__(
        self,
        name: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        readiness: Callable[[], Awaitable[None]] | None = None,
        health_interval_s: float = 2.0,
        max_concurrent_rpcs: int | None = None,
        bind_retry_s: float = BIND_RETRY_S,
        errors: StatusTable | None = None,
        access: AccessTable | None = None,
        secret: str | None = None,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
    ) -> None:
        if health_interval_s <= 0:
            raise ValueError(f"health_interval_s must be positive, got {health_interval_s}")
        self.name = name
        self.host = host
        self.port = port
        self.server: grpc.aio.Server = grpc.aio.server(
            interceptors=[
                _ServerInterceptor(
                    {**_SHARED_ERRORS, **(errors or {})},
                    access=access,
                    verifier=TokenVerifier(secret if secret is not None else process_secret()),
                )
            ],
            options=[*_SERVER_OPTIONS, *keepalive.server_options()],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self._readiness = readiness
        self._interval = health_interval_s
        self._bind_retry_s = bind_retry_s
        self._service_names: list[str] = []
        self._health = health_aio.HealthServicer()
        self._ready: bool | None = None  # None until the first readiness check
        self._health_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False

    def add_service_name(self, full_name: str) -> None:
        """Announce a service added to :attr:`server` (e.g. ``rideshare.trip.v1.TripService``)
        to health checking and reflection. Call before :meth:`start`."""
        if self._started:
            raise RuntimeError("add_service_name() after start()")
        if full_name not in self._service_names:
            self._service_names.append(full_name)

    async def start(self) -> int:
        """Bind, start serving, run the first readiness check, and return the bound port.

        While the port is taken, waits up to ``bind_retry_s`` for it, then raises
        :class:`rideshare.ports.PortInUseError` naming the port and its holder."""
        if self._started:
            raise RuntimeError(f"{self.name} gRPC server already started")
        self._started = True
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        _add_reflection(
            self.server,
            [
                *self._service_names,
                HEALTH_SERVICE_NAME,
                REFLECTION_V1ALPHA_SERVICE_NAME,
                REFLECTION_V1_SERVICE_NAME,
            ],
        )
        await self._set_status(_NOT_SERVING)
        self.port = await self._bind()
        await self.server.start()
        await self._health.set(LIVENESS_SERVICE_NAME, _SERVING)
        await self._check_readiness()
        self._health_task = asyncio.create_task(
            self._watch_readiness(), name=f"{self.name}-grpc-health"
        )
        logger.info("%s gRPC server listening on %s:%d", self.name, self.host, self.port)
        return self.port

    async def _bind(self) -> int:
        # grpc binds by itself and logs an error line per failed try, so it tries only once
        # wait_for_port found the port free; a process that takes it in between costs a retry.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._bind_retry_s
        while True:
            await wait_for_port(self.host, self.port, retry_s=max(0.0, deadline - loop.time()))
            try:
                return self.server.add_insecure_port(f"{self.host}:{self.port}")
            except RuntimeError:  # grpc's "Failed to bind to address"
                if self.port == 0:
                    raise
                if loop.time() >= deadline:
                    error = await port_in_use_error(self.host, self.port, self._bind_retry_s)
                    raise error from None
            await asyncio.sleep(RETRY_EVERY_S)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, stop accepting calls, and give in-flight calls ``grace_s`` to
        finish before cancelling them. Safe to call twice."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        logger.info("%s gRPC server stopping (grace %.1f s)", self.name, grace_s)
        # Before the listener closes, so load balancers watching health move away first.
        await self._health.enter_graceful_shutdown()
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.wait([self._health_task])
        await self.server.stop(grace_s)
        logger.info("%s gRPC server stopped", self.name)

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._check_readiness()

    async def _check_readiness(self) -> None:
        ready, error = True, None
        if self._readiness is not None:
            try:
                async with asyncio.timeout(self._interval):
                    await self._readiness()
            except Exception as exc:
                ready, error = False, exc
        if ready is self._ready:
            return
        self._ready = ready
        if ready:
            logger.info("%s ready: SERVING", self.name)
        else:
            logger.warning("%s not ready: NOT_SERVING (%r)", self.name, error)
        await self._set_status(_SERVING if ready else _NOT_SERVING)

    async def _set_status(self, status: int) -> None:
        for service in ("", *self._service_names):
            await self._health.set(service, status)


def _add_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Serve reflection as v1alpha (what grpcio-reflection ships) and v1 (same wire format)."""
    servicer = reflection_aio.ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    _ensure_reflection_v1_descriptor()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (REFLECTION_V1ALPHA_SERVICE_NAME, REFLECTION_V1_SERVICE_NAME)
        ]
    )


def _ensure_reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` into the default descriptor pool, so that
    reflection can describe the v1 service it serves: the v1alpha file renamed, as upstream's
    v1 file is the v1alpha one under a new package."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.AddSerializedFile(proto.SerializeToString())


# --- the server interceptor --------------------------------------------------------------


class _ServerInterceptor(_ServerInterceptorBase):
    """Wraps each method's handler once (cached per method), so a call costs one dict lookup
    here and the work inside the wrapped behaviour."""

    def __init__(
        self, errors: StatusTable, *, access: AccessTable | None, verifier: TokenVerifier
    ) -> None:
        self._errors = errors
        self._access = access
        self._verifier = verifier
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(method, handler, self._errors, self._guard_of(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _guard_of(self, method: str) -> _Guard | None:
        if method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES:
            return None
        if self._access is None:
            return _Guard(self._verifier, method, None)
        return _Guard(self._verifier, method, self._access.get(method, _NOBODY))


_NOBODY = Allow(operator=False)  # a method no rule names: refused, even to the operator


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Guard:
    """Who may call one method: :meth:`admit` is the caller of a call, or raises _Refused."""

    __slots__ = ("_method", "_rule", "_verifier")

    def __init__(self, verifier: TokenVerifier, method: str, rule: Allow | None) -> None:
        self._verifier = verifier
        self._method = method
        self._rule = rule

    def admit(self, authorization: str | None, acting_user: str | None) -> Caller:
        try:
            caller = self._verifier.caller(authorization, acting_user)
        except IdentityError as exc:
            _log_refusal(self._method, "UNAUTHENTICATED", str(exc))
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        if self._rule is not None and not self._rule.permits(caller):
            who = caller.service
            if caller.user is not None:
                who += f" acting for the {caller.user.role} {caller.user.id}"
            _log_refusal(self._method, "PERMISSION_DENIED", who)
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {self._method}")
        return caller


# Refusals per method and kind at most this often: a scan would otherwise flood the log.
_REFUSAL_LOG_INTERVAL_S = 5.0
_refusal_logged_at: dict[tuple[str, str], float] = {}


def _log_refusal(method: str, code: str, detail: str) -> None:
    now = time.monotonic()
    key = (method, code)
    if now - _refusal_logged_at.get(key, -_REFUSAL_LOG_INTERVAL_S) < _REFUSAL_LOG_INTERVAL_S:
        return
    _refusal_logged_at[key] = now
    logger.warning("refused a call of %s: %s (%s)", method, code, detail)


class _Observer:
    """Per-method metrics children and names, bound once so that a call only observes."""

    __slots__ = ("_handled", "_latency", "_service", "_type", "method")

    def __init__(self, method: str, rpc_type: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.method = method
        self._service = service
        self._type = rpc_type
        self._latency = GRPC_SERVER_HANDLING_SECONDS.labels(service, name, rpc_type)
        self._handled = {
            code: GRPC_SERVER_HANDLED.labels(service, name, rpc_type, code.name)
            for code in grpc.StatusCode
        }

    def done(self, code: grpc.StatusCode, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._latency.observe(elapsed)
        self._handled[code].inc()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> %s in %.2f ms", self.method, code.name, elapsed * 1000)


def _wrap_handler(
    method: str, handler: _Handler, errors: StatusTable, guard: _Guard | None
) -> _Handler:
    if handler.request_streaming and handler.response_streaming:
        behaviour, factory, rpc_type = (
            handler.stream_stream,
            grpc.stream_stream_rpc_method_handler,
            "bidi_stream",
        )
    elif handler.request_streaming:
        behaviour, factory, rpc_type = (
            handler.stream_unary,
            grpc.stream_unary_rpc_method_handler,
            "client_stream",
        )
    elif handler.response_streaming:
        behaviour, factory, rpc_type = (
            handler.unary_stream,
            grpc.unary_stream_rpc_method_handler,
            "server_stream",
        )
    else:
        behaviour, factory, rpc_type = (
            handler.unary_unary,
            grpc.unary_unary_rpc_method_handler,
            "unary",
        )
    if behaviour is None:
        return handler
    observer = _Observer(method, rpc_type)
    # grpc.aio picks how to drive a behaviour by its kind (coroutine function, async
    # generator function, or sync in a thread), so the wrapper must be of the same kind.
    if inspect.isasyncgenfunction(behaviour):
        wrapped: Callable[..., Any] = _wrap_async_gen(behaviour, observer, errors, guard)
    elif inspect.iscoroutinefunction(behaviour):
        wrapped = _wrap_coroutine(behaviour, observer, errors, guard)
    elif guard is None:
        return handler
    else:
        wrapped = _refuse_sync
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _refuse_sync(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "synchronous handlers are not served")


async def _admit(
    guard: _Guard | None, incoming: _Incoming, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """Put the caller in caller_var, or end the call (AbortError)."""
    if guard is None:
        return
    try:
        caller_var.set(guard.admit(incoming.authorization, incoming.acting_user))
    except _Refused as exc:
        await context.abort(exc.code, exc.message)


def _wrap_coroutine(
    behaviour: Callable[..., Awaitable[Any]],
    observer: _Observer,
    errors: StatusTable,
    guard: _Guard | None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def intercepted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        incoming = _Incoming(context)
        token = request_id_var.set(incoming.request_id)
        caller_token = caller_var.set(None)
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            await _admit(guard, incoming, context)
            response = await behaviour(request, context)
            code = context.code() or grpc.StatusCode.OK
            return response
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, server = _status_for(exc, errors)
            await _abort_for(exc, context, observer.method, code, server)
        finally:
            observer.done(code, started)
            caller_var.reset(caller_token)
            request_id_var.reset(token)

    return intercepted


def _wrap_async_gen(
    behaviour: Callable[..., AsyncIterator[Any]],
    observer: _Observer,
    errors: StatusTable,
    guard: _Guard | None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def intercepted(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # No reset: each RPC runs in its own task, and the values must hold across yields.
        incoming = _Incoming(context)
        request_id_var.set(incoming.request_id)
        caller_var.set(None)
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            await _admit(guard, incoming, context)
            async for response in behaviour(request, context):
                yield response
            code = context.code() or grpc.StatusCode.OK
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, server = _status_for(exc, errors)
            await _abort_for(exc, context, observer.method, code, server)
        finally:
            observer.done(code, started)

    return intercepted


class _Incoming:
    """What the interceptor reads from a call's metadata, in one pass: the request id (a
    new one unless a usable one came), the service token and the acting user."""

    __slots__ = ("acting_user", "authorization", "request_id")

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        request_id: str | None = None
        self.authorization: str | None = None
        self.acting_user: str | None = None
        for key, value in context.invocation_metadata() or ():
            if not isinstance(value, str):
                continue
            # The first of each wins; a repeated key cannot override it.
            if key == REQUEST_ID_METADATA_KEY:
                if request_id is None:
                    request_id = value if 0 < len(value) <= _MAX_REQUEST_ID_LEN else ""
            elif key == AUTH_METADATA_KEY:
                if self.authorization is None:
                    self.authorization = value
            elif key == ACTING_USER_METADATA_KEY and self.acting_user is None:
                self.acting_user = value
        self.request_id = request_id or new_request_id()


def _status_for(exc: Exception, errors: StatusTable) -> tuple[grpc.StatusCode, str | None]:
    """The status an escaped exception ends its call with: the service's table's code for a
    domain error; UNAVAILABLE for an outage, with the server's name; INTERNAL for a bug."""
    code = status_of(exc, errors)
    if code is not None:
        return code, None
    server = outage_of(exc)
    return (grpc.StatusCode.INTERNAL if server is None else grpc.StatusCode.UNAVAILABLE), server


async def _abort_for(
    exc: Exception,
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    code: grpc.StatusCode,
    server: str | None,
) -> NoReturn:
    """End the call with ``code`` from :func:`_status_for`: a domain error's own message, or
    the outage / internal-error handling of :func:`_abort_unexpected`."""
    if server is None and code is not grpc.StatusCode.INTERNAL:
        await context.abort(code, str(exc))
    await _abort_unexpected(exc, context, method, server)


async def _abort_unexpected(
    exc: Exception,
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    server: str | None,
) -> NoReturn:
    """End the call for an error no handler dealt with: UNAVAILABLE when ``server`` (from
    :func:`~rideshare.grpc_errors.outage_of`) is unreachable, which the client retries;
    INTERNAL otherwise."""
    if server is None:
        await _abort_internal(exc, context, method)
    _log_outage(server, exc, method)
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, f"{server} is unavailable, retry later ({type(exc).__name__})"
    )
    raise AssertionError("unreachable: abort raises")


# Outage warnings per server at most this often: every call fails alike during an outage.
_OUTAGE_LOG_INTERVAL_S = 5.0
_outage_logged_at: dict[str, float] = {}


def _log_outage(server: str, exc: Exception, method: str) -> None:
    now = time.monotonic()
    if now - _outage_logged_at.get(server, -_OUTAGE_LOG_INTERVAL_S) < _OUTAGE_LOG_INTERVAL_S:
        return
    _outage_logged_at[server] = now
    logger.warning("%s unavailable in %s, answering UNAVAILABLE: %r", server, method, exc)


async def _abort_internal(
    exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> NoReturn:
    error_id = new_request_id()
    logger.error(
        "unexpected error in %s (id=%s)",
        method,
        error_id,
        exc_info=exc,
        extra={"error_id": error_id, "grpc_method": method},
    )
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id={error_id})")
