"""The rider service's pure rules, and the shared credential and paging helpers they use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rider import domain
from rider.domain import InvalidRiderError, Rider, RiderChanges, TripSummary
from rideshare.credentials import ScryptParams, hash_password, verify_password
from rideshare.paging import InvalidPageError, decode_page_token, encode_page_token, page_size

FAST = ScryptParams(n=2**10)  # the stored parameters travel with the hash


def test_a_password_hash_is_salted_and_verifies_only_the_right_password() -> None:
    first = hash_password("secret-password", params=FAST)
    second = hash_password("secret-password", params=FAST)

    assert first != second  # a fresh salt each time
    assert first.startswith("scrypt$1024$8$1$")
    assert "secret-password" not in first
    assert verify_password("secret-password", first)
    assert not verify_password("secret-passwore", first)


@pytest.mark.parametrize(
    "encoded", ["", "scrypt$x", "bcrypt$1$2$3$AAAA$AAAA", "scrypt$1024$8$1$!$!"]
)
def test_a_malformed_hash_matches_nothing(encoded: str) -> None:
    assert not verify_password("anything", encoded)


@pytest.mark.parametrize("phone", ["+4915112345678", "+12025550123", "+86123456789012"])
def test_e164_phones_are_accepted(phone: str) -> None:
    assert (
        domain.new_rider(
            name="Ada", phone=phone, email=None, password="correct horse battery"
        ).phone
        == phone
    )


@pytest.mark.parametrize(
    "phone",
    ["", "4915112345678", "+0123456789", "+49 151 1234567", "+1234567", "+1234567890123456"],
)
def test_other_phone_spellings_are_invalid(phone: str) -> None:
    with pytest.raises(InvalidRiderError, match=r"E\.164"):
        domain.new_rider(name="Ada", phone=phone, email=None, password="correct horse battery")


def test_signup_rules_name_the_bad_field_and_never_echo_the_password() -> None:
    with pytest.raises(InvalidRiderError, match="at least 8") as info:
        domain.new_rider(name="Ada", phone="+4915112345678", email=None, password="hunter2")
    assert "hunter2" not in str(info.value)
    with pytest.raises(InvalidRiderError, match="name"):
        domain.new_rider(
            name=" ", phone="+4915112345678", email=None, password="correct horse battery"
        )
    with pytest.raises(InvalidRiderError, match="email"):
        domain.new_rider(
            name="Ada", phone="+4915112345678", email="a@b", password="correct horse battery"
        )
    signup = domain.new_rider(
        name="  Ada ",
        phone="+4915112345678",
        email=" ada@example.com ",
        password="correct horse battery",
    )
    assert (signup.name, signup.email) == ("Ada", "ada@example.com")


def _rider(**fields: object) -> Rider:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "id": "r1",
        "name": "Ada",
        "phone": "+4915112345678",
        "email": "ada@example.com",
        "rating_avg": 0.0,
        "rating_count": 0,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return Rider(**values)  # type: ignore[arg-type]


def test_an_update_with_the_same_values_changes_nothing() -> None:
    rider = _rider()
    assert not RiderChanges().changes(rider)
    assert not domain.rider_changes(name="Ada", email=None).changes(rider)
    assert domain.rider_changes(name=None, email="").changes(rider)  # removes the email
    assert domain.rider_changes(name="Bea", email=None).changes(rider)


def _trip(trip_id: str, at: datetime) -> TripSummary:
    return TripSummary(trip_id, 1, None, None, None, "", 1, at, None, None, at)


def test_trip_pages_continue_after_the_last_trip_shown() -> None:
    now = datetime.now(UTC)
    page = domain.trips_page("r1", size=2, token="")
    trips = [_trip(f"t{i}", now - timedelta(minutes=i)) for i in range(3)]

    token = page.next_token("r1", trips)
    following = domain.trips_page("r1", size=2, token=token)

    assert page.limit == 2 and page.after is None
    assert following.after == (trips[1].sort_at, "t1")
    assert page.next_token("r1", trips[:2]) == ""  # no third row fetched: last page
    with pytest.raises(InvalidRiderError):
        domain.trips_page("r2", size=2, token=token)  # another rider's token


def test_page_sizes_default_clamp_and_reject_negatives() -> None:
    assert domain.trips_page("r", size=0, token="").limit == domain.DEFAULT_PAGE_SIZE
    assert domain.trips_page("r", size=10_000, token="").limit == domain.MAX_PAGE_SIZE
    with pytest.raises(InvalidRiderError, match="negative"):
        domain.trips_page("r", size=-1, token="")
    assert page_size(5, default=20, maximum=100) == 5


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        "bm90IGpzb24",
        encode_page_token("s", ["x"]),
        encode_page_token("s", [1, "a"]),
        encode_page_token("other", ["a", "b"]),
        "A" * 2000,
    ],
)
def test_malformed_or_foreign_page_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidPageError):
        decode_page_token(token, "s", key_types=(str, str))


def test_a_page_token_round_trips_its_key() -> None:
    token = encode_page_token("s", ["2024-01-01T00:00:00+00:00", 7])
    assert decode_page_token(token, "s", key_types=(str, int)) == ["2024-01-01T00:00:00+00:00", 7]
