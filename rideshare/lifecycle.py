"""Signals to a stop event: how a process learns that it should shut down in order, and how
its workers wait for work or that event, whichever comes first."""

from __future__ import annotations

import asyncio
import signal
from typing import TypeVar

__all__ = ["next_or_stop", "stop_on_signals", "wait_any"]

T = TypeVar("T")


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT, so the process leaves its service's ``running()``
    block (see :func:`rideshare.runtime.serve_until_signalled`) and shuts down in order.

    Call from inside the running loop; the handlers live as long as the loop.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def next_or_stop(queue: asyncio.Queue[T], stop: asyncio.Event) -> T | None:
    """The next item of ``queue``, or None once ``stop`` is set."""
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, delay_s: float) -> None:
    """Sleep until ``stop`` or ``wake`` is set, or ``delay_s`` seconds pass."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
