"""Small helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 10.0,
    *,
    every_s: float = 0.02,
) -> None:
    """Poll ``condition()`` (plain or async) until it holds; TimeoutError after ``timeout_s``.

    For outcomes produced by another process or task (an event consumed, a stream delivered):
    a bounded poll, never a fixed sleep.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(every_s)
