"""Small helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import Message
from nats.js import JetStreamContext

from protos.events import MSG_ID_HEADER
from rideshare.bus import Envelope, encode_envelope, make_envelope
from rideshare.grpc_client import make_channel


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 10.0,
    *,
    every_s: float = 0.02,
) -> None:
    """Poll ``condition()`` (plain or async) until it holds; TimeoutError after ``timeout_s``.

    For outcomes produced by another process or task (an event consumed, a stream delivered):
    a bounded poll, never a fixed sleep.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(every_s)


async def publish_event(
    js: JetStreamContext,
    subject: str,
    payload: Message,
    *,
    aggregate_id: str,
    version: int,
    event_id: str | None = None,
    msg_id: str | None = None,
) -> Envelope:
    """Publish an event on the stream as its producer's outbox relay would, and return it.

    Passing the ``event_id`` of an earlier event with a new ``msg_id`` stores a second copy
    that JetStream does not deduplicate: what a consumer sees when an event is redelivered.
    """
    envelope = make_envelope(
        payload,
        type=subject,
        aggregate_id=aggregate_id,
        aggregate_version=version,
        event_id=event_id,
    )
    await js.publish(
        subject,
        encode_envelope(envelope),
        timeout=5,
        headers={MSG_ID_HEADER: msg_id or envelope.event_id},
    )
    return envelope


async def grpc_status(call: Awaitable[object]) -> grpc.StatusCode:
    """The status code a gRPC call fails with; AssertionError if it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded")


def operator_channel(target: str) -> grpc.aio.Channel:
    """A channel to a service whose calls carry the operator's identity (as grpcurl with
    ``rideshare token --grpc`` does) and no deadline of their own beyond an hour: tests bound
    their waits themselves."""
    return make_channel(target, default_timeout_s=3600.0)
