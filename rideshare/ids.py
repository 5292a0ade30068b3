"""The one rule for ids that cross a service boundary: 1 to 64 of ``A-Z a-z 0-9 _ -``.

Ids become NATS subject tokens (``location.driver.<id>``, ``notify.user.<id>``), parts of
Redis keys and log lines, so a character with a meaning there (``.``, ``*``, ``>``, ``:``,
whitespace, control characters) must never reach them. Every id the system mints fits: UUIDs
(36 characters with hyphens), hex UUIDs (32), ``admin-<uuid>`` subjects (42). Each service's
``wire.py`` checks the ids of every request here and raises its own INVALID_ARGUMENT error,
naming the field, before anything else reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = ["ID_RE", "MAX_ID_LEN", "InvalidIdError", "check_id", "check_ids", "is_id"]

MAX_ID_LEN: Final = 64
ID_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}")


class InvalidIdError(ValueError):
    """An id that is empty, longer than MAX_ID_LEN or has a character outside the rule."""


def is_id(value: object) -> bool:
    """Whether ``value`` is a string that follows the id rule."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def check_id(value: str, field: str, *, required: bool = True) -> str:
    """``value`` when it is a well-formed id (or, unless ``required``, empty for "none");
    :class:`InvalidIdError` naming ``field`` otherwise."""
    if not value:
        if required:
            raise InvalidIdError(f"{field} is required")
        return value
    if not is_id(value):
        # The value itself stays out of the message: it is hostile input of any length.
        raise InvalidIdError(
            f"{field} must be 1-{MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def check_ids(values: Iterable[str], field: str) -> list[str]:
    """Every one of ``values`` checked with :func:`check_id` (each one required)."""
    return [check_id(value, field) for value in values]
