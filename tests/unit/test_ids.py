"""The id rule at every gRPC boundary (rideshare.ids): what passes is safe as a NATS subject
token and a Redis key part, and every id the system mints passes."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import events
from rideshare.ids import MAX_ID_LEN, InvalidIdError, check_id, check_ids, is_id


@given(st.text(max_size=100))
def test_an_id_that_passes_is_a_safe_subject_token(value: str) -> None:
    if not is_id(value):
        with pytest.raises(InvalidIdError):
            check_id(value, "driver_id")
        return
    assert check_id(value, "driver_id") == value
    assert 1 <= len(value) <= MAX_ID_LEN
    assert value.isascii() and value.isprintable()
    assert not set(value) & set(".*> :\t\r\n{}")
    assert events.location_driver_subject(value).count(".") == 2


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_every_string_of_the_charset_up_to_64_passes(value: str) -> None:
    assert check_id(value, "trip_id") == value


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        uuid.uuid4().hex,
        f"admin-{uuid.uuid4()}",
        f"rider-{uuid.uuid4().hex[:8]}",
        f"d-{uuid.uuid4().hex[:12]}",
        "d1",
        "t_0",
        "x" * MAX_ID_LEN,
    ],
)
def test_the_ids_the_system_and_its_tests_mint_pass(value: str) -> None:
    assert is_id(value)


@pytest.mark.parametrize(
    "value",
    ["*", ">", "a.b", "a b", "a*", "d1>", "x" * (MAX_ID_LEN + 1), "a\n", "a\x00", "é", "a:b"],
)
def test_subject_and_key_syntax_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidIdError, match=r"^driver_id must be 1-64 characters"):
        check_id(value, "driver_id")


def test_empty_is_refused_when_required_and_none_otherwise() -> None:
    with pytest.raises(InvalidIdError, match=r"^trip_id is required$"):
        check_id("", "trip_id")
    assert check_id("", "actor_id", required=False) == ""
    with pytest.raises(InvalidIdError, match=r"^exclude_driver_ids"):
        check_ids(["d1", ""], "exclude_driver_ids")
