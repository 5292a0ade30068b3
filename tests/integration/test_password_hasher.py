"""The bounded password KDF pool with real scrypt in real threads: it refuses at once when
full, a cancelled waiter leaves no trace, and the event loop stays free while it hashes."""

from __future__ import annotations

import asyncio
import time

import pytest

from rideshare.credentials import HasherBusyError, PasswordHasher, verify_password
from tests.helpers import eventually


async def test_a_full_queue_refuses_at_once_and_the_admitted_ones_finish() -> None:
    hasher = PasswordHasher(concurrency=1, queue=2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(hasher.hash(f"password-{i}") for i in range(6)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, HasherBusyError)]
        hashed = [r for r in results if isinstance(r, str)]
        assert len(hashed) == 3 and len(refused) == 3, results
        assert verify_password("password-0", hashed[0])
        assert hasher.refused == 3 and hasher.admitted == 0
        assert time.monotonic() - started < 10.0
    finally:
        hasher.close()


async def test_a_waiter_cancelled_in_the_queue_gives_its_place_back() -> None:
    hasher = PasswordHasher(concurrency=1, queue=3)
    try:
        first = asyncio.ensure_future(hasher.hash("password-first"))
        waiting = [asyncio.ensure_future(hasher.hash(f"password-{i}")) for i in range(3)]
        await eventually(lambda: hasher.admitted == 4)  # every call submitted
        for task in waiting:
            task.cancel()
        for task in waiting:
            with pytest.raises(asyncio.CancelledError):
                await task
        await first
        await eventually(lambda: hasher.admitted == 0)
        assert await hasher.authenticate(None, "anything at all") is None
    finally:
        hasher.close()


async def test_the_event_loop_keeps_ticking_while_every_kdf_slot_is_busy() -> None:
    hasher = PasswordHasher(concurrency=2, queue=16)
    try:
        flood = asyncio.gather(*(hasher.hash(f"pw-{i}") for i in range(12)))
        gaps = []
        last = time.monotonic()
        while not flood.done():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        await flood
        assert max(gaps) < 0.5, max(gaps)
    finally:
        hasher.close()
