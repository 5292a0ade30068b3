"""Account rules shared by the rider and driver services: phones, passwords, the password KDF.

No I/O. :func:`hash_password` and :func:`verify_password` cost tens of milliseconds of CPU on
purpose (scrypt); async callers run them in a thread (``asyncio.to_thread``, as
:func:`login` does) so the event loop never stalls on them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_KDF",
    "MAX_PASSWORD_LEN",
    "MIN_PASSWORD_LEN",
    "InvalidCredentialError",
    "ScryptParams",
    "burn_verify",
    "check_email",
    "check_password",
    "check_phone",
    "check_text",
    "hash_password",
    "login",
    "verify_password",
]

MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 128  # bounds the KDF's input; a longer "password" is a denial of service
MAX_EMAIL_LEN = 254

# E.164: "+", a country code that does not start with 0, 8 to 15 digits in all.
_E164_RE = re.compile(r"\+[1-9][0-9]{7,14}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


class InvalidCredentialError(ValueError):
    """An input that breaks an account rule; the message says which and why."""


def check_phone(phone: str) -> str:
    """The phone number if it is E.164 (``+4915112345678``), else InvalidCredentialError.

    Spaces, dashes and brackets are not accepted: the number is a unique key, and two
    spellings of one number must not become two accounts.
    """
    if not _E164_RE.fullmatch(phone):
        raise InvalidCredentialError(
            "phone must be in E.164 form: '+' and 8-15 digits, e.g. +4915112345678"
        )
    return phone


def check_password(password: str) -> str:
    """The password if its length is acceptable, else InvalidCredentialError (never echoes it)."""
    if len(password) < MIN_PASSWORD_LEN:
        raise InvalidCredentialError(f"password must have at least {MIN_PASSWORD_LEN} characters")
    if len(password) > MAX_PASSWORD_LEN:
        raise InvalidCredentialError(f"password must have at most {MAX_PASSWORD_LEN} characters")
    return password


def check_text(value: str, *, field: str, max_len: int) -> str:
    """``value`` stripped, if 1 to ``max_len`` characters remain, else InvalidCredentialError."""
    stripped = value.strip()
    if not stripped:
        raise InvalidCredentialError(f"{field} must not be empty")
    if len(stripped) > max_len:
        raise InvalidCredentialError(f"{field} must have at most {max_len} characters")
    return stripped


def check_email(email: str) -> str:
    """The email address stripped, or InvalidCredentialError when it does not look like one."""
    stripped = email.strip()
    if len(stripped) > MAX_EMAIL_LEN or not _EMAIL_RE.fullmatch(stripped):
        raise InvalidCredentialError("email must look like name@example.com")
    return stripped


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters; stored with each hash, so they can be raised later without
    invalidating old hashes. Memory use is 128 * n * r bytes (16 MiB by default)."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    dklen: int = 32
    salt_len: int = 16


DEFAULT_KDF = ScryptParams()
_SCHEME = "scrypt"


def _derive(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * n * r
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, params: ScryptParams = DEFAULT_KDF) -> str:
    """``scrypt$n$r$p$<salt>$<hash>`` (base64) for ``password``, with a fresh random salt."""
    salt = os.urandom(params.salt_len)
    digest = _derive(password, salt, params.n, params.r, params.p, params.dklen)
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (from :func:`hash_password`); the comparison
    takes the same time wherever the digests differ. A malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _derive(
            password, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _burn_hash() -> str:
    return hash_password("not the password of anyone")


def burn_verify(password: str) -> None:
    """Spend what a verification costs and match nothing: for an unknown account, so the
    answer time does not tell which accounts exist."""
    verify_password(password, _burn_hash())


async def login(account: tuple[str, str] | None, password: str) -> str | None:
    """The account id when ``password`` matches, else None; ``account`` is the (id, hash)
    found by phone number, or None when there is none. The KDF runs in a thread, and an
    unknown account costs the same time as a wrong password."""
    if account is None:
        await asyncio.to_thread(burn_verify, password)
        return None
    account_id, encoded = account
    return account_id if await asyncio.to_thread(verify_password, password, encoded) else None
