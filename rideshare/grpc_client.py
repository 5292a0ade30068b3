"""Client channels to the other services: deadlines by default, retries only where safe.

Conventions every caller follows:

- Every call has a deadline. A call without ``timeout=`` gets its method's entry in
  ``method_timeouts`` (expensive methods, such as the ones that hash a password, need longer
  than reads), else the channel's ``default_timeout_s``; a long-lived stream (``WatchDriver``,
  ``ReportPositions``) passes a large explicit ``timeout=`` instead, and the caller cancels it
  when it is no longer needed.
- Only methods named in ``idempotent_methods`` are retried, and only on UNAVAILABLE (the
  request never reached a handler, or the server was going away): up to 3 attempts with
  exponential backoff, all within the call's one deadline. Commands that change state are not
  listed unless they carry their own idempotency key.
- Every call carries the process's identity (rideshare/identity.py): ``authorization:
  Bearer <service token>`` from the channel's signer (the process's own service; ``operator``
  by default, for tools run by a person) and, when the current task acts for an app user
  (:data:`rideshare.identity.acting_user_var`, which the edge sets per request), that user as
  ``x-acting-user``. Metadata the caller passes itself is kept as it is.
- Several copies of an upstream: ``target`` may list them, ``host:port,host:port`` (IP
  literals, as gRPC's ``ipv4:``/``ipv6:`` targets take them), or name them by DNS,
  ``dns:///name:port`` (every address the name resolves to; a Kubernetes headless Service).
  Calls are spread over every ready copy (the ``round_robin`` policy, for one address too,
  where a name may resolve to several); a copy that goes away is left out until it is back,
  and a call that met it while it was going away is retried on another one when its method is
  idempotent (above).
- The request id of the current task (:data:`rideshare.log.request_id_var`), if any, travels as
  ``x-request-id`` metadata, so one request can be followed through every service's logs.

Build channels in the service's ``app.running()`` (never at import time) and close them on
shutdown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from rideshare.addresses import channel_target
from rideshare.identity import (
    ACTING_USER_METADATA_KEY,
    AUTH_METADATA_KEY,
    TokenSigner,
    acting_user_var,
    default_signer,
)
from rideshare.keepalive import DEFAULT_KEEPALIVE, Keepalive
from rideshare.log import REQUEST_ID_METADATA_KEY, request_id_var

__all__ = ["channel_target", "make_channel", "retry_service_config", "service_config"]

# Keepalive pings as rideshare/keepalive.py agrees them with the servers. Reconnects start
# after 0.25 s and back off to at most 2 s, so a restarted copy is back in the rotation within
# a couple of seconds of listening again; an idle attempt to a closed port costs nothing.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 1),
]

if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


def make_channel(
    target: str,
    *,
    idempotent_methods: Sequence[str] = (),
    default_timeout_s: float = 5.0,
    method_timeouts: Mapping[str, float] | None = None,
    signer: TokenSigner | None = None,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> grpc.aio.Channel:
    """An insecure ``grpc.aio`` channel to ``target`` following the module's conventions:
    ``host:port``, a list ``host:port,host:port`` of one service's copies, or ``dns:///name:port``
    (:func:`channel_target`), balanced round_robin.

    ``idempotent_methods`` and the keys of ``method_timeouts`` are fully qualified,
    ``package.Service/Method`` (e.g. ``"rideshare.location.v1.LocationService/NearestDrivers"``);
    only the former are retried. ``signer`` is who the calls come from (default:
    :func:`rideshare.identity.default_signer`, the operator). ``keepalive`` must be the
    servers' policy (the default everywhere; tests shorten both). Create it inside the running
    event loop.
    """
    timeouts = {"default": default_timeout_s, **(method_timeouts or {})}
    for name, value in timeouts.items():
        if value <= 0:
            raise ValueError(f"the deadline of {name} must be positive, got {value}")
    by_path = {_path(full): t for full, t in (method_timeouts or {}).items()}
    options = [
        *_CHANNEL_OPTIONS,
        *keepalive.client_options(),
        ("grpc.service_config", service_config(idempotent_methods)),
    ]
    return grpc.aio.insecure_channel(
        channel_target(target),
        options=options,
        interceptors=_interceptors(
            _CallDefaults(default_timeout_s, by_path, signer or default_signer())
        ),
    )


def _path(full: str) -> bytes:
    """``package.Service/Method`` as gRPC names it on the wire: ``b"/package.Service/Method"``."""
    service, sep, method = full.lstrip("/").partition("/")
    if not sep or not service or not method or "/" in method:
        raise ValueError(f"not a fully qualified method (package.Service/Method): {full!r}")
    return f"/{service}/{method}".encode()


def service_config(idempotent_methods: Sequence[str] = ()) -> str:
    """The JSON service config of every channel: round_robin over the target's addresses,
    and :func:`retry_service_config`'s retries of ``idempotent_methods``."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if idempotent_methods:
        config.update(json.loads(retry_service_config(idempotent_methods)))
    return json.dumps(config)


def retry_service_config(methods: Sequence[str]) -> str:
    """The JSON service config that retries ``methods`` (``package.Service/Method``) on
    UNAVAILABLE, 3 attempts in all."""
    names = []
    for full in methods:
        service, sep, method = full.lstrip("/").partition("/")
        if not sep or not service or not method or "/" in method:
            raise ValueError(f"not a fully qualified method (package.Service/Method): {full!r}")
        names.append({"service": service, "method": method})
    config = {
        "methodConfig": [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return json.dumps(config)


class _CallDefaults:
    """Adds the default deadline (the method's own, if it has one), the caller's identity
    and the request id to a call's details."""

    __slots__ = ("_by_path", "_signer", "_timeout")

    def __init__(
        self, default_timeout_s: float, by_path: Mapping[bytes, float], signer: TokenSigner
    ) -> None:
        self._timeout = default_timeout_s
        self._by_path = by_path
        self._signer = signer

    def timeout_of(self, method: str | bytes) -> float:
        path = method.encode() if isinstance(method, str) else method
        return self._by_path.get(path, self._timeout)

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout
        if timeout is None:
            timeout = self.timeout_of(details.method)
        given = details.metadata
        added: list[tuple[str, str]] = []
        if given is None or AUTH_METADATA_KEY not in given:
            added.append((AUTH_METADATA_KEY, self._signer.bearer))
        user = acting_user_var.get()
        if user is not None and (given is None or ACTING_USER_METADATA_KEY not in given):
            added.append((ACTING_USER_METADATA_KEY, user.header))
        request_id = request_id_var.get()
        if request_id is not None and (given is None or REQUEST_ID_METADATA_KEY not in given):
            added.append((REQUEST_ID_METADATA_KEY, str(request_id)))
        # A new object: the caller's metadata may be shared between calls.
        metadata = grpc.aio.Metadata(*(given or ()), *added) if added else given
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


def _interceptors(defaults: _CallDefaults) -> list[grpc.aio.ClientInterceptor]:
    # One object per call kind: grpc.aio files an interceptor under the first kind it is an
    # instance of, so an object implementing all four would only see unary-unary calls.
    return [
        cast("grpc.aio.ClientInterceptor", interceptor)
        for interceptor in (
            _UnaryUnaryDefaults(defaults),
            _UnaryStreamDefaults(defaults),
            _StreamUnaryDefaults(defaults),
            _StreamStreamDefaults(defaults),
        )
    ]


class _UnaryUnaryDefaults(_UnaryUnary):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call: grpc.aio.UnaryUnaryCall[Any, Any] = await continuation(
            self._defaults.details(client_call_details), request
        )
        return call


class _UnaryStreamDefaults(_UnaryStream):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        call: grpc.aio.UnaryStreamCall[Any, Any] = await continuation(
            self._defaults.details(client_call_details), request
        )
        return call


class _StreamUnaryDefaults(_StreamUnary):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        call: grpc.aio.StreamUnaryCall[Any, Any] = await continuation(
            self._defaults.details(client_call_details), request_iterator
        )
        return call


class _StreamStreamDefaults(_StreamStream):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
        call: grpc.aio.StreamStreamCall[Any, Any] = await continuation(
            self._defaults.details(client_call_details), request_iterator
        )
        return call
