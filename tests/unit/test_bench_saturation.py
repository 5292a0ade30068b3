"""The saturation search of the benchmarks, on synthetic systems: no servers, no clocks."""

from __future__ import annotations

import asyncio

import pytest

from scripts.bench.common import SaturationSearch, Step, open_loop, saturation

TARGET_S = 0.050


def search(
    capacity: float,
    *,
    start: float,
    max_rate: float = 10_000,
    bisections: int = 3,
    keeps_up: bool = True,
) -> tuple[SaturationSearch, list[float]]:
    """Runs the search against a system whose p99 is 10 ms up to ``capacity`` per second;
    beyond it p99 is 2 s, or (``keeps_up=False``) it answers 80 % of its capacity with a p99
    that looks fine on what got through."""
    s = SaturationSearch(
        start=start, target_p99_s=TARGET_S, max_rate=max_rate, bisections=bisections
    )
    rates: list[float] = []
    while (rate := s.next_rate()) is not None:
        rates.append(rate)
        if rate <= capacity:
            s.record(Step(offered=rate, achieved=rate, p99_s=0.010))
        elif keeps_up:
            s.record(Step(offered=rate, achieved=rate, p99_s=2.0))
        else:
            s.record(Step(offered=rate, achieved=0.8 * capacity, p99_s=0.020))
    return s, rates


def test_doubles_until_the_first_step_over_the_target_then_bisects() -> None:
    s, rates = search(300, start=50)
    assert rates == [50, 100, 200, 400, 300, 350, 325]
    best = s.result.best
    assert best is not None and best.offered == 300


def test_a_step_whose_achieved_rate_falls_short_fails_even_with_a_low_p99() -> None:
    s, rates = search(300, start=50, keeps_up=False)
    assert rates == [50, 100, 200, 400, 300, 350, 325]
    best = s.result.best
    assert best is not None and best.offered == 300
    assert not s.result.passes(Step(offered=400, achieved=300, p99_s=0.020))


def test_a_first_step_over_the_target_bisects_towards_zero() -> None:
    s, rates = search(30, start=100, bisections=2)
    assert rates == [100, 50, 25]
    best = s.result.best
    assert best is not None and best.offered == 25


def test_nothing_passes_when_even_the_smallest_step_is_over() -> None:
    s, _ = search(0, start=100, bisections=3)
    assert s.result.best is None


def test_stops_at_the_maximum_rate_when_every_step_passes() -> None:
    s, rates = search(1e9, start=100, max_rate=500)
    assert rates == [100, 200, 400, 500]
    best = s.result.best
    assert best is not None and best.offered == 500


def test_start_must_be_positive_and_within_the_maximum() -> None:
    with pytest.raises(ValueError, match="start"):
        SaturationSearch(start=0, target_p99_s=TARGET_S, max_rate=10)
    with pytest.raises(ValueError, match="start"):
        SaturationSearch(start=20, target_p99_s=TARGET_S, max_rate=10)


def test_saturation_runs_the_steps_the_search_picks() -> None:
    async def run_step(rate: float) -> Step:
        return Step(offered=rate, achieved=rate, p99_s=0.010 if rate <= 120 else 1.0)

    result = asyncio.run(
        saturation(run_step, start=40, target_p99_s=TARGET_S, max_rate=1_000, bisections=2)
    )
    assert [s.offered for s in result.steps] == [40, 80, 160, 120, 140]
    assert result.best is not None and result.best.offered == 120


async def test_open_loop_counts_a_fixed_latency_as_throughput_and_a_backlog_as_lost() -> None:
    async def one_second_late() -> bool:  # every answer delayed alike, as by a window
        await asyncio.sleep(1.0)
        return True

    delayed, _ = await open_loop(one_second_late, rate=50, seconds=1.0)
    assert delayed.achieved >= 40  # answered as fast as asked, a second later

    lock = asyncio.Lock()

    async def one_at_a_time() -> bool:  # 20 per second at most: a queue builds
        async with lock:
            await asyncio.sleep(0.05)
        return True

    queued, _ = await open_loop(one_at_a_time, rate=50, seconds=1.0)
    assert queued.achieved <= 30
