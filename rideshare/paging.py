"""Pagination shared by every List rpc (common.proto): bounded page sizes, opaque page tokens.

A token carries the keyset position after the last item of a page, plus a ``scope`` naming
the list and its filters (``"rider.trips:<rider_id>"``), so a token replayed against another
list or other filters is rejected instead of silently returning the wrong rows. Tokens are
opaque to clients, not secret: they hold nothing a caller could not already see.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

__all__ = ["InvalidPageError", "decode_page_token", "encode_page_token", "page_size"]

_VERSION = 1
_MAX_TOKEN_LEN = 1024

Key = Sequence[str | int]


class InvalidPageError(ValueError):
    """A negative page size, or a page token that is malformed or from another list."""


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use: ``default`` for 0, clamped to ``maximum``; negative is invalid."""
    if requested < 0:
        raise InvalidPageError(f"page_size must not be negative, got {requested}")
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_page_token(scope: str, key: Key) -> str:
    """An opaque token for the position ``key`` (strings and ints) in the list ``scope``."""
    raw = json.dumps({"v": _VERSION, "s": scope, "k": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, scope: str, *, key_types: Sequence[type]) -> list[str | int]:
    """The position in ``token``; :class:`InvalidPageError` unless it was made by
    :func:`encode_page_token` for this ``scope`` with a key of exactly ``key_types``."""
    if len(token) > _MAX_TOKEN_LEN:
        raise InvalidPageError("page_token is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidPageError("page_token is malformed") from None
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise InvalidPageError("page_token is malformed")
    if data.get("s") != scope:
        raise InvalidPageError("page_token belongs to another list or other filters")
    key = data.get("k")
    if (
        not isinstance(key, list)
        or len(key) != len(key_types)
        or not all(
            type(part) is expected  # bool is an int subclass: exact types only
            for part, expected in zip(key, key_types, strict=True)
        )
    ):
        raise InvalidPageError("page_token is malformed")
    return key
