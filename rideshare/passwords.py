"""What a new password must not be: too short or too long, blank, one character or a short
pattern repeated, a straight run of keys (``12345678``, ``abcdefgh``), made of the account's
phone number, or one of the passwords people choose most. Pure.

The common passwords are the ``passwords`` frequency list of the ``zxcvbn`` package (the
Python port of Dropbox's zxcvbn, MIT): 30,000 passwords ranked by how often they appeared in
leaked password dumps, of which about 11,600 are long enough to pass the length rule. A
maintained package rather than a list copied into the repository: the list is updated by
upgrading the pin, and the package has no dependencies of its own. Only that one list is
used (zxcvbn's scoring also rejects names and English words, which would turn away
passphrases like "correct horse battery" that are long enough to be strong).

:func:`password_problem` is the whole policy; it never echoes the password.
"""

from __future__ import annotations

import functools
import itertools
import re

__all__ = ["MAX_PASSWORD_LEN", "MIN_PASSWORD_LEN", "is_common_password", "password_problem"]

MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 128  # bounds the KDF's input; a longer "password" is a denial of service

# A unit this long or shorter, repeated to fill the whole password, is no password:
# "aaaaaaaa", "abababab", "abcabcabc", "passpass".
_MAX_REPEATED_UNIT = 4
# A password of digits that is a piece of the phone number this long is made from it.
_MIN_PHONE_PIECE = 6
# What people put between digit groups when they write a phone number down.
_PHONE_SEPARATORS = re.compile(r"[\s+\-().\/]")


@functools.cache
def _common_passwords() -> frozenset[str]:
    # Loaded on the first sign-up, not at import: the module holds every zxcvbn list (~3 MB).
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p for p in FREQUENCY_LISTS["passwords"] if len(p) >= MIN_PASSWORD_LEN)


def is_common_password(password: str) -> bool:
    """Whether ``password``, in any letter case and without surrounding blanks, is on the list
    of common passwords."""
    return password.strip().casefold() in _common_passwords()


def _repeats_a_short_unit(password: str) -> bool:
    for size in range(1, _MAX_REPEATED_UNIT + 1):
        unit = password[:size]
        if len(password) > size and unit * (len(password) // size) == password:
            return True
    return False


def _is_a_straight_run(password: str) -> bool:
    """Every character one step above (or below) the one before: 12345678, hgfedcba."""
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(password)}
    return steps in ({1}, {-1})


def _phone_forms(phone: str) -> tuple[str, ...]:
    """The phone's digits, and its national part whatever the country code's length (1-3
    digits), with and without the trunk prefix 0 that many countries dial before it."""
    digits = "".join(c for c in phone if c.isdigit())
    national = [digits[k:] for k in range(1, 4) if len(digits) - k >= 6]
    return (digits, *national, *("0" + n for n in national))


def _made_of_phone(password: str, phone: str) -> bool:
    if not phone:
        return False
    bare = _PHONE_SEPARATORS.sub("", password).casefold()
    if not bare:
        return False
    digits = "".join(c for c in phone if c.isdigit())
    if (
        len(bare) >= _MIN_PHONE_PIECE
        and bare.isdigit()
        and (bare in digits or bare in digits[::-1])
    ):
        return True  # the number, a long piece of it, or it backwards
    return any(form in bare or form[::-1] in bare for form in _phone_forms(phone))


def password_problem(password: str, *, phone: str = "") -> str | None:
    """Why ``password`` may not be used for the account with ``phone`` (E.164), as a message
    for the user naming the rule it breaks; None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LEN:
        return f"password must have at least {MIN_PASSWORD_LEN} characters"
    if len(password) > MAX_PASSWORD_LEN:
        return f"password must have at most {MAX_PASSWORD_LEN} characters"
    if not password.strip():
        return "password must not be only spaces"
    if _repeats_a_short_unit(password.casefold()):
        return "password must not be one character or a short pattern repeated (like aaaaaaaa)"
    if _is_a_straight_run(password.casefold()):
        return "password must not be a run of consecutive keys (like 12345678 or abcdefgh)"
    if _made_of_phone(password, phone):
        return "password must not be made from the phone number"
    if is_common_password(password):
        return "password is one of the most common passwords; choose a less guessable one"
    return None
