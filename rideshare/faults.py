"""Crash points: named places where a process kills itself (SIGKILL) when its environment
arms them, so that a test can prove that a crash at exactly that place loses nothing.

The chaos run (scripts/chaos.py) kills processes from outside at whatever point they are; a
crash point is for the few places where the timing is the whole question, such as between a
payment provider's answer and the commit that records it. Unarmed, a crash point costs a set
lookup. ``RIDESHARE_CRASH_AT`` holds the armed names, comma-separated.
"""

from __future__ import annotations

import functools
import os
import signal

__all__ = ["AFTER_CHARGE", "CRASH_AT_ENV", "crash_point"]

CRASH_AT_ENV = "RIDESHARE_CRASH_AT"

# The rider service, after the provider answered a charge and before the outcome is committed.
AFTER_CHARGE = "rider.after_charge"


@functools.cache
def _armed() -> frozenset[str]:
    return frozenset(name.strip() for name in os.environ.get(CRASH_AT_ENV, "").split(",")) - {""}


def crash_point(name: str) -> None:
    """Die here, at once and without cleanup, when ``name`` is armed."""
    if name in _armed():
        os.kill(os.getpid(), signal.SIGKILL)
