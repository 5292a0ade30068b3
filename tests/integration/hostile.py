"""What a hostile client sends to the gRPC boundary, for every service's tests: ids with the
syntax of NATS subjects and Redis keys, and page tokens forged every way that once reached
a query (a huge integer, a date out of range) or a decoder (bad base64, deep nesting)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable

import grpc
import pytest

__all__ = ["BAD_IDS", "forged_token", "forged_tokens", "invalid_argument"]

# Not ids: subject wildcards and separators, whitespace, too long, not ASCII.
BAD_IDS = ["*", ">", "a.b", "a b", "d1>", "x" * 65, "é", "a\nb", "a:b"]


def forged_token(data: object) -> str:
    """A page token holding ``data`` as JSON, encoded as real ones are."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def forged_tokens(scope: str, key: list[object], *, by_time: bool) -> list[str]:
    """Tokens for the list ``scope`` whose real keys look like ``key`` (a time first when the
    list is ordered ``by_time``), each wrong in another way."""
    at = "2026-01-01T00:00:00+00:00"
    rest = key[1:]

    def keyed(*parts: object) -> str:
        return forged_token({"v": 1, "s": scope, "k": [*parts]})

    times = [
        keyed("0001-01-01T00:00:00+01:00", *rest),  # before year 1 in UTC: OverflowError
        keyed("9999-12-31T23:59:59-01:00", *rest),  # after year 9999 in UTC
        keyed("2026-01-01T00:00:00", *rest),  # no timezone
        keyed("2026-02-30T00:00:00+00:00", *rest),  # no such day
    ]
    return [
        *(times if by_time else []),
        keyed(10**30, *rest),  # a huge integer
        keyed(*key[:-1], 2**70),  # a huge integer where an id belongs
        keyed(True, *rest),
        keyed(at, *rest, "extra"),  # too long a key
        keyed(),  # no key
        forged_token([at, *rest]),  # another shape
        forged_token({"v": 1, "s": scope + "x", "k": key}),  # another list's
        forged_token({"v": 1, "s": scope, "k": key})[:-2] + "!!",  # not base64url
        "not a token at all",
        "eyJ2Ij",  # truncated
        base64.urlsafe_b64encode(b"[" * 600).decode(),  # deep nesting
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),  # not UTF-8
        "A" * 2000,  # too long
    ]


async def invalid_argument(call: Awaitable[object]) -> str:
    """The details of the INVALID_ARGUMENT ``call`` fails with (anything else fails the test)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return caught.value.details() or ""
