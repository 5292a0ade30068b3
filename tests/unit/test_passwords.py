"""The password rules: each rule turns away what it is for with a message naming it, and lets
long, unremarkable passwords through."""

from __future__ import annotations

import pytest

from rideshare.credentials import InvalidCredentialError, check_password
from rideshare.passwords import is_common_password, password_problem

PHONE = "+4915112345678"


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery",
        "correct-horse",
        "simulated-phone-1",
        "Tr0ub4dor&3x",
        "a" * 127 + "b",
        "ab" * 3 + "c" * 3,  # repeats, but not one unit throughout
        "9081726354",
        "15112345 is my bike lock",  # a piece of the number, but not the national number
    ],
)
def test_long_unremarkable_passwords_are_accepted(password: str) -> None:
    assert password_problem(password, phone=PHONE) is None


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("", "at least 8"),
        ("hunter2", "at least 8"),
        ("x" * 129, "at most 128"),
        (" " * 8, "only spaces"),
        ("\t \n \t \n ", "only spaces"),
        ("aaaaaaaa", "repeated"),
        ("AaAaAaAa", "repeated"),
        ("abababab", "repeated"),
        ("abcabcabc", "repeated"),
        ("passpasspass", "repeated"),
        ("11111111", "repeated"),
        ("12345678", "consecutive"),
        ("23456789", "consecutive"),
        ("abcdefghij", "consecutive"),
        ("HGFEDCBA", "consecutive"),
        ("password", "common"),
        ("Password", "common"),
        (" PASSWORD ", "common"),
        ("qwertyuiop", "common"),
        ("iloveyou", "common"),
        ("password1", "common"),
        ("1q2w3e4r", "common"),
    ],
)
def test_each_rule_names_itself(password: str, rule: str) -> None:
    problem = password_problem(password, phone=PHONE)
    assert problem is not None and rule in problem


@pytest.mark.parametrize(
    "password",
    [
        "4915112345678",  # its digits
        "+4915112345678",  # the number as written
        "+49 151 1234 5678",
        "+49 (151) 123-456-78",
        "8765432115194",  # backwards
        "15112345678",  # the national part
        "015112345678",  # ... dialled at home, with the trunk 0
        "0151-123 456 78",
        "12345678",  # digits of it (also a run of keys)
        "51123456",
        "myphone015112345678",  # the number inside
        "15112345678!",
        "!87654321151",
    ],
)
def test_a_password_made_from_the_phone_number_is_refused(password: str) -> None:
    problem = password_problem(password, phone=PHONE)
    assert problem is not None
    assert "phone number" in problem or "consecutive" in problem


@pytest.mark.parametrize("phone", ["+12025550123", "+861234567890", "+3531234567"])
def test_the_national_part_is_found_whatever_the_country_code_length(phone: str) -> None:
    digits = phone[1:]
    for national in (digits[1:], digits[2:], digits[3:]):
        if len(national) >= 8:
            assert password_problem(national, phone=phone) is not None


def test_the_same_digits_are_fine_for_another_phone() -> None:
    assert password_problem("15112345678x", phone="+447700900123") is None
    assert password_problem("15112345678x", phone=PHONE) is not None


def test_the_common_list_holds_the_known_worst_and_not_passphrases() -> None:
    assert is_common_password("baseball")
    assert is_common_password("SUNSHINE")
    assert not is_common_password("correct horse battery")


def test_check_password_never_echoes_the_password() -> None:
    for bad in ("hunter2", "baseball", "zzzzzzzz", PHONE):
        with pytest.raises(InvalidCredentialError) as info:
            check_password(bad, phone=PHONE)
        assert bad not in str(info.value)
    assert check_password("correct horse battery", phone=PHONE) == "correct horse battery"
