"""Signals to a stop event: how a process learns that it should shut down in order."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["stop_on_signals"]


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT, so the process leaves its service's ``running()``
    block (see :func:`rideshare.runtime.serve_until_signalled`) and shuts down in order.

    Call from inside the running loop; the handlers live as long as the loop.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
