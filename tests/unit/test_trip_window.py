"""When a dispatch window closes (trip/batching.py ``BatchWindow``): counted from its first
request's arrival, shortened by what closing took, and by a slower close reported while it
collects. Only the window's clock is exercised; its close needs the stores and is tested in
tests/integration/test_trip_batch.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from trip.batching import BatchWindow
from trip.settings import TripSettings
from trip.store import TripStore

# Long windows, so that "closed early" and "waited out" are far apart on a busy host.
WINDOW_S = 60.0


def window(window_s: float = WINDOW_S) -> BatchWindow:
    nothing = cast(Any, None)  # the close's collaborators; collecting never uses them
    store = cast(TripStore, nothing)
    return BatchWindow(
        nothing, store, nothing, TripSettings(dispatch_window_s=window_s), clock=nothing
    )


async def collect(win: BatchWindow, *, within_s: float) -> list[str]:
    stop = asyncio.Event()
    async with asyncio.timeout(within_s):
        return await win._collect(stop)


async def test_a_window_is_counted_from_its_first_requests_arrival() -> None:
    win = window()
    # The rider asked 59.9 s ago (a slow commit, a queue): 0.1 s of the window is left.
    win.add("trip-1", since=time.monotonic() - (WINDOW_S - 0.1))
    win.add("trip-2")
    assert await collect(win, within_s=WINDOW_S / 2) == ["trip-1", "trip-2"]


async def test_a_kick_without_its_arrival_opens_the_window_now() -> None:
    win = window(window_s=0.5)
    win.add("trip-1")
    started = time.monotonic()
    assert await collect(win, within_s=30) == ["trip-1"]
    assert time.monotonic() - started >= 0.5 - 0.05  # waited its window out


async def test_a_slower_close_reported_while_collecting_ends_the_window_earlier() -> None:
    win = window()
    # Opened 29.9 s ago: with no close to go by, 30.1 s are left.
    win.add("trip-1", since=time.monotonic() - (WINDOW_S / 2 - 0.1))
    collecting = asyncio.create_task(collect(win, within_s=WINDOW_S / 2))
    await asyncio.sleep(0.2)
    assert not collecting.done()
    # An earlier window reports its close took half a window (the most that is counted):
    # this one had only 0.1 s of its collecting left, which is over now.
    await win._note_took(time.monotonic() - WINDOW_S / 2, 1, offered=False)
    assert await collecting == ["trip-1"]


async def test_a_close_counts_until_its_offers_are_published() -> None:
    published = asyncio.Event()
    waits = 0

    async def flushed() -> None:
        nonlocal waits
        waits += 1
        await published.wait()

    nothing = cast(Any, None)
    win = BatchWindow(
        nothing,
        cast(TripStore, nothing),
        nothing,
        TripSettings(dispatch_window_s=WINDOW_S),
        clock=nothing,
        flushed=flushed,
    )
    closed_at = time.monotonic()
    noting = asyncio.create_task(win._note_took(closed_at, 1, offered=True))
    await asyncio.sleep(0.3)
    assert not noting.done() and waits == 1  # waits for the relay, not only the commit
    published.set()
    async with asyncio.timeout(10):
        await noting
    assert win._collect_s() <= WINDOW_S - 0.3
    # A close that offered nothing does not wait for the relay.
    async with asyncio.timeout(10):
        await win._note_took(time.monotonic(), 1, offered=False)
    assert waits == 1


async def test_a_window_holding_more_trips_than_the_last_ones_expects_a_longer_close() -> None:
    win = window()
    await win._note_took(time.monotonic() - 1.0, 100, offered=False)  # 100 trips in 1 s
    await win._note_took(time.monotonic() - 2.0, 10, offered=False)  # a slow small one
    # (The closes measured a few microseconds more than 1 and 2 s.)
    assert win._collect_s(50) == pytest.approx(WINDOW_S - 2.0, abs=0.1)  # the slowest close
    # 300 trips: the biggest window's close scaled to them (3 s), not the small one's 60 s.
    assert win._collect_s(300) == pytest.approx(WINDOW_S - 3.0, abs=0.1)
    assert win._collect_s(10_000) == WINDOW_S / 2  # never less than half the window
