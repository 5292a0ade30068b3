"""Account rules shared by the rider and driver services: phones, passwords, the password KDF.

:func:`hash_password` and :func:`verify_password` cost tens of milliseconds of CPU on purpose
(scrypt). Services never call them on the event loop, nor in an unbounded number of threads:
they go through one :class:`PasswordHasher` per process, which runs at most ``concurrency``
of them at once and lets at most ``queue`` more wait. A signup or login beyond that fails at
once with :class:`HasherBusyError` (the servicer answers RESOURCE_EXHAUSTED, the edge 429 with
Retry-After), so a flood of signups makes signups slower or refused, and leaves the CPU, the
event loop and the database pool to every other call of the service.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from rideshare.passwords import MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, password_problem

__all__ = [
    "DEFAULT_KDF",
    "MAX_PASSWORD_LEN",
    "MIN_PASSWORD_LEN",
    "HasherBusyError",
    "InvalidCredentialError",
    "PasswordHasher",
    "ScryptParams",
    "burn_verify",
    "check_email",
    "check_password",
    "check_phone",
    "check_text",
    "hash_password",
    "verify_password",
]

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


def check_password(password: str, *, phone: str) -> str:
    """The password if the rules of :mod:`rideshare.passwords` accept it for the account with
    ``phone``, else InvalidCredentialError naming the rule (never echoes the password)."""
    problem = password_problem(password, phone=phone)
    if problem is not None:
        raise InvalidCredentialError(problem)
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


T = TypeVar("T")


class HasherBusyError(Exception):
    """Every KDF slot and every queue place is taken: the caller should retry a little later.

    The process is alive and every other call of it still works, so it is not UNAVAILABLE
    (which would count against a circuit breaker for the whole service): servicers map it to
    RESOURCE_EXHAUSTED.
    """


class PasswordHasher:
    """The process's one way to run the KDF: at most ``concurrency`` at once in threads of its
    own, at most ``queue`` more waiting, and :class:`HasherBusyError` at once beyond that.

    A caller cancelled while waiting (its gRPC deadline passed, the client went away) leaves
    the queue without costing any CPU; a KDF already running cannot be stopped and keeps its
    slot until it ends, so ``concurrency`` bounds the threads really hashing. The queue is FIFO.
    Build it in the service's ``app.running()`` and :meth:`close` it once the server has
    drained, so no call is left waiting for a hash.

    :meth:`authenticate` is the one door of every login; the limits on login attempts (per
    phone, per client, a lockout after failures) are in front of it, at the edge
    (edge/logins.py), so no KDF work is spent on an attempt they refuse.
    """

    def __init__(self, *, concurrency: int, queue: int, params: ScryptParams = DEFAULT_KDF) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError(f"need concurrency >= 1 and queue >= 0, got {concurrency}, {queue}")
        self.concurrency = concurrency
        self.queue = queue
        self._params = params
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kdf")
        self._lock = threading.Lock()  # done callbacks run in the executor's threads
        self._admitted = 0  # submitted and not yet finished or withdrawn
        self.refused = 0

    @property
    def admitted(self) -> int:
        """KDF runs hashing now or waiting for a thread."""
        return self._admitted

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._admitted >= self.concurrency + self.queue:
                self.refused += 1
                raise HasherBusyError(
                    f"password hashing is at capacity ({self.concurrency} running, "
                    f"{self.queue} waiting); retry shortly"
                )
            self._admitted += 1
        try:
            job: Future[T] = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        job.add_done_callback(self._release)
        # Cancelling the wrapper cancels ``job`` if it has not started; the callback then
        # gives its place back at once.
        return await asyncio.wrap_future(job)

    def _release(self, _: object) -> None:
        with self._lock:
            self._admitted -= 1

    async def hash(self, password: str) -> str:
        """:func:`hash_password` in the bounded pool."""
        return await self._run(functools.partial(hash_password, params=self._params), password)

    async def verify(self, password: str, encoded: str) -> bool:
        """:func:`verify_password` in the bounded pool."""
        return await self._run(verify_password, password, encoded)

    async def authenticate(self, account: tuple[str, str] | None, password: str) -> str | None:
        """The account id when ``password`` matches, else None; ``account`` is the (id, hash)
        found by phone number, or None when there is none. An unknown account costs the same
        time (and the same place in the queue) as a wrong password."""
        if account is None:
            await self._run(burn_verify, password)
            return None
        account_id, encoded = account
        return account_id if await self.verify(password, encoded) else None

    def close(self) -> None:
        """Stop the threads once the running KDFs end; queued ones are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
