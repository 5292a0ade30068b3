"""Page tokens (rideshare.paging): what encode makes decodes to the same key, and anything a
client can forge is InvalidPageError, never another exception (OverflowError, RecursionError,
UnicodeDecodeError...) that would surface as INTERNAL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rideshare.paging import InvalidPageError, KeyPart, decode_page_token, encode_page_token

SCOPE = "rider.trips:r1"
KEY_TYPES = (datetime, str, int)


def forged(data: Any) -> str:
    """A token with ``data`` as its JSON, encoded the way real tokens are."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def keyed(*key: Any) -> str:
    return forged({"v": 1, "s": SCOPE, "k": list(key)})


def decodes_or_refuses(token: str) -> None:
    try:
        decode_page_token(token, SCOPE, key_types=KEY_TYPES)
    except InvalidPageError:
        pass


@given(st.text(max_size=2000))
def test_any_string_is_a_position_or_invalid_page_error(token: str) -> None:
    decodes_or_refuses(token)


@given(st.binary(max_size=800))
def test_any_bytes_behind_base64_are_a_position_or_invalid_page_error(raw: bytes) -> None:
    decodes_or_refuses(base64.urlsafe_b64encode(raw).decode().rstrip("="))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@given(st.lists(_json, max_size=4))
def test_any_json_key_is_a_position_or_invalid_page_error(key: list[Any]) -> None:
    decodes_or_refuses(keyed(*key))


@given(_json)
def test_any_json_document_is_a_position_or_invalid_page_error(data: Any) -> None:
    decodes_or_refuses(forged(data))


@given(
    st.datetimes(timezones=st.timezones()).filter(lambda d: d.utcoffset() is not None),
    st.text(max_size=256),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_what_encode_makes_decodes_to_the_same_key(at: datetime, text: str, number: int) -> None:
    try:
        instant = at.astimezone(UTC)
    except OverflowError:
        return  # not a position any store holds; encode is never asked for one
    token = encode_page_token(SCOPE, [at, text, number])
    # Compared in UTC: zoneinfo datetimes in a DST fold never equal another zone's.
    assert decode_page_token(token, SCOPE, key_types=KEY_TYPES) == [instant, text, number]


AT = "2026-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(keyed(AT, "t1", 2**63), id="int-above-int64"),
        pytest.param(keyed(AT, "t1", -(2**63) - 1), id="int-below-int64"),
        pytest.param(keyed(AT, "t1", 10**4000), id="huge-int"),
        pytest.param(keyed(AT, "t1", True), id="bool-as-int"),
        pytest.param(keyed(AT, "t1", 1.5), id="float-as-int"),
        pytest.param(keyed("0001-01-01T00:00:00+01:00", "t1", 1), id="date-before-year-1-utc"),
        pytest.param(keyed("9999-12-31T23:59:59-01:00", "t1", 1), id="date-after-9999-utc"),
        pytest.param(keyed("0000-01-01T00:00:00+00:00", "t1", 1), id="year-0"),
        pytest.param(keyed("2026-13-01T00:00:00+00:00", "t1", 1), id="month-13"),
        pytest.param(keyed("2026-01-01T00:00:00", "t1", 1), id="naive-date"),
        pytest.param(keyed(1767225600, "t1", 1), id="date-as-number"),
        pytest.param(keyed(AT, "x" * 257, 1), id="text-too-long"),
        pytest.param(keyed(AT, 7, 1), id="number-as-text"),
        pytest.param(keyed(AT, "t1"), id="key-too-short"),
        pytest.param(keyed(AT, "t1", 1, 2), id="key-too-long"),
        pytest.param(forged({"v": 1, "s": SCOPE, "k": {"a": 1}}), id="key-not-a-list"),
        pytest.param(forged({"v": True, "s": SCOPE, "k": [AT, "t1", 1]}), id="version-true"),
        pytest.param(forged({"v": 2, "s": SCOPE, "k": [AT, "t1", 1]}), id="other-version"),
        pytest.param(forged([1, SCOPE, [AT, "t1", 1]]), id="list-not-object"),
        pytest.param(forged(None), id="null"),
        pytest.param(forged({"v": 1, "s": "rider.trips:r2", "k": [AT, "t1", 1]}), id="other-scope"),
        pytest.param("not base64!", id="outside-the-alphabet"),
        pytest.param("YWJj\x00", id="nul"),
        pytest.param("eyJ2Ij", id="truncated"),
        pytest.param("A", id="one-character"),
        pytest.param("_-_-", id="binary"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode(), id="not-utf8"),
        pytest.param(base64.urlsafe_b64encode(b"[" * 700).decode(), id="deep-nesting"),
        pytest.param("A" * 1025, id="too-long"),
    ],
)
def test_a_forged_token_is_invalid_page_error(token: str) -> None:
    with pytest.raises(InvalidPageError):
        decode_page_token(token, SCOPE, key_types=KEY_TYPES)


def test_a_datetime_comes_back_in_utc_at_the_same_instant() -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    key: list[KeyPart] = [at, "t1", 1]
    (back, _, _) = decode_page_token(encode_page_token(SCOPE, key), SCOPE, key_types=KEY_TYPES)
    assert back == at
    assert isinstance(back, datetime) and back.tzinfo is UTC
