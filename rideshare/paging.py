"""Pagination shared by every List rpc (common.proto): bounded page sizes, opaque page tokens.

A token carries the keyset position after the last item of a page, plus a ``scope`` naming
the list and its filters (``"rider.trips:<rider_id>"``), so a token replayed against another
list or other filters is rejected instead of silently returning the wrong rows. Tokens are
opaque to clients, not secret: they hold nothing a caller could not already see.

Tokens are validated, not signed. A caller can forge one, but a forged position only moves
where the caller's own (already authorised) list starts, so the danger is in the decoding:
every token that :func:`decode_page_token` accepts is one :func:`encode_page_token` could have
made, with each key part of its declared type and inside the range its store takes (a 64-bit
integer, a datetime Python and PostgreSQL both hold, a bounded string). Anything else, down
to a huge integer or a date in year 0, is :class:`InvalidPageError`, which each service
answers as INVALID_ARGUMENT: never an OverflowError deep in a query.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

__all__ = ["InvalidPageError", "KeyPart", "decode_page_token", "encode_page_token", "page_size"]

_VERSION: Final = 1
# Room for the longest token encode makes: 256 characters of text at up to 12 bytes each as
# JSON escapes (an astral character is two \uXXXX), in base64.
_MAX_TOKEN_LEN: Final = 8192
_MAX_TEXT_LEN: Final = 256
_INT64: Final = range(-(2**63), 2**63)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]*")

KeyPart = str | int | datetime


class InvalidPageError(ValueError):
    """A negative page size, or a page token that is malformed or from another list."""


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use: ``default`` for 0, clamped to ``maximum``; negative is invalid."""
    if requested < 0:
        raise InvalidPageError(f"page_size must not be negative, got {requested}")
    if requested == 0:
        return default
    return min(requested, maximum)


def _encode_part(part: KeyPart) -> str | int:
    if isinstance(part, datetime):
        return part.astimezone(UTC).isoformat()
    return part


def encode_page_token(scope: str, key: Sequence[KeyPart]) -> str:
    """An opaque token for the position ``key`` in the list ``scope``: strings, ints and
    aware datetimes (written as ISO 8601 in UTC)."""
    raw = json.dumps(
        {"v": _VERSION, "s": scope, "k": [_encode_part(p) for p in key]}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_part(part: object, expected: type) -> KeyPart:
    """One key part as ``expected``; InvalidPageError when it is not one, or out of range."""
    # type(), not isinstance(): bool is an int subclass and must not pass as one.
    if expected is int and type(part) is int and part in _INT64:
        return part
    if expected is str and type(part) is str and len(part) <= _MAX_TEXT_LEN:
        return part
    if expected is datetime and type(part) is str and len(part) <= 64:
        try:
            at = datetime.fromisoformat(part)
            if at.tzinfo is not None and at.utcoffset() is not None:
                # Converting can overflow at the ends of the range (0001-01-01T00:00+01:00).
                return at.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise InvalidPageError("page_token is malformed")


def decode_page_token(token: str, scope: str, *, key_types: Sequence[type]) -> list[KeyPart]:
    """The position in ``token``; :class:`InvalidPageError` unless it was made by
    :func:`encode_page_token` for this ``scope`` with a key of exactly ``key_types`` (``str``,
    ``int`` or ``datetime``; datetimes come back in UTC)."""
    if len(token) > _MAX_TOKEN_LEN:
        raise InvalidPageError("page_token is too long")
    # b64decode skips characters outside the alphabet unless told not to: refuse them here.
    if _TOKEN_RE.fullmatch(token) is None:
        raise InvalidPageError("page_token is malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidPageError("page_token is malformed") from None
    if not isinstance(data, dict) or data.get("v") != _VERSION or type(data.get("v")) is not int:
        raise InvalidPageError("page_token is malformed")
    if data.get("s") != scope:
        raise InvalidPageError("page_token belongs to another list or other filters")
    key = data.get("k")
    if not isinstance(key, list) or len(key) != len(key_types):
        raise InvalidPageError("page_token is malformed")
    return [_decode_part(part, expected) for part, expected in zip(key, key_types, strict=True)]
