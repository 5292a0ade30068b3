"""One simulation run: sign the phones up, let them ride for the duration, drain, check the
invariants, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

import httpx

from rideshare.simulate.client import Api, ApiError
from rideshare.simulate.config import SimConfig
from rideshare.simulate.drivers import SimDriver
from rideshare.simulate.invariants import (
    ServerError,
    TripView,
    Violation,
    assignment_of,
    foreign_positions,
    overlapping_assignments,
    server_errors,
    unfinished_trips,
)
from rideshare.simulate.registry import Registry
from rideshare.simulate.riders import SimRider
from rideshare.simulate.stats import Stats, render_line, render_view

__all__ = ["SimulationError", "run"]

logger = logging.getLogger(__name__)

T = TypeVar("T", SimDriver, SimRider)


class SimulationError(Exception):
    """The run could not start (edge unreachable, nobody could sign up)."""


async def run(
    cfg: SimConfig,
    *,
    stop: asyncio.Event | None = None,
    out: TextIO = sys.stdout,
    on_started: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the simulation; returns the summary (``summary["ok"]``: no invariant broke).

    ``stop`` ends it early (Ctrl-C): no drain, the checks still run. ``on_started`` is
    called once every phone has signed up.
    """
    stop = stop or asyncio.Event()
    stats = Stats(started=time.monotonic())
    registry = Registry(stats)
    errors_5xx: list[ServerError] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=cfg.edge_url, timeout=cfg.http_timeout_s, limits=limits
    ) as http:
        await _check_edge(http, cfg.edge_url)
        api = Api(http, stats, errors_5xx)
        ws_base = cfg.edge_url.replace("https://", "wss://").replace("http://", "ws://")
        kw: dict[str, Any] = {"cfg": cfg, "api": api, "registry": registry, "ws_base": ws_base}
        drivers = await _set_up([SimDriver(i, **kw) for i in range(cfg.drivers)], cfg, stop)
        riders = await _set_up([SimRider(i, **kw) for i in range(cfg.riders)], cfg, stop)
        if cfg.drivers + cfg.riders and not drivers and not riders:
            raise SimulationError(f"no simulated phone could sign up at {cfg.edge_url}")
        stats.started = time.monotonic()  # rates and the clock count from the ride, not signup
        no_more_requests, phones_stop = asyncio.Event(), asyncio.Event()
        if on_started is not None:
            on_started()

        def snapshot(violations: Sequence[Violation] = ()) -> dict[str, Any]:
            return stats.summary(
                time.monotonic(),
                online_drivers=len(registry.online),
                trips_by_state=registry.by_state(),
                violations=[v.as_dict() for v in violations],
            )

        async with asyncio.TaskGroup() as tg:
            for d in drivers:
                tg.create_task(_guarded(stats, f"driver {d.index}", d.run(phones_stop)))
            for r in riders:
                tg.create_task(
                    _guarded(stats, f"rider {r.index}", r.run(no_more_requests, phones_stop))
                )
            view = tg.create_task(_view(cfg, snapshot, out, phones_stop))
            await _control(cfg, registry, stop, no_more_requests)
            phones_stop.set()
        del view
        violations = await _check(cfg, api, registry, errors_5xx)
    summary = snapshot(violations)
    summary["config"] = cfg.as_json()
    if cfg.view != "none":
        print(render_view(summary, title="rideshare simulator: final"), file=out, flush=True)
        print("invariants: " + ("all held" if summary["ok"] else "BROKEN"), file=out, flush=True)
        for v in summary["violations"]:
            print(f"  {v['kind']}: {v['detail']}", file=out, flush=True)
    if cfg.json_out is not None:
        cfg.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def _check_edge(http: httpx.AsyncClient, url: str) -> None:
    try:
        r = await http.get("/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        raise SimulationError(f"the edge at {url} is not reachable: {exc!r}") from None
    if r.status_code != 200:
        raise SimulationError(f"the edge at {url} is not healthy: /healthz -> {r.status_code}")


async def _guarded(stats: Stats, who: str, work: Awaitable[None]) -> None:
    """Run one phone's ``work``; an exception ends that phone only, counted in
    ``stats.crashes`` (with a debug log), never a traceback or a torn-down run. An
    ExceptionGroup from the phone's own TaskGroup counts each of its exceptions."""
    try:
        await work
    except ApiError:
        stats.crashes[f"{who.split()[0]} gave up"] += 1  # the failed call is in errors
    except Exception as exc:
        logger.debug("%s failed", who, exc_info=True)
        leaves = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for leaf in leaves:
            stats.crashes[f"{who.split()[0]} {type(leaf).__name__}"] += 1


async def _set_up(phones: list[T], cfg: SimConfig, stop: asyncio.Event) -> list[T]:
    """Sign every phone up, a few at a time (password hashing is deliberately slow)."""
    gate = asyncio.Semaphore(cfg.signup_concurrency)
    ready: list[T] = []

    async def one(phone: T) -> None:
        async with gate:
            if stop.is_set():
                return
            try:
                await phone.setup()
            except ApiError:
                return  # counted by Api
            except Exception as exc:
                logger.debug("setting up phone %s failed", phone.index, exc_info=True)
                phone.stats.crashes[f"setup {type(exc).__name__}"] += 1
                return
            ready.append(phone)

    async with asyncio.TaskGroup() as tg:
        for phone in phones:
            tg.create_task(one(phone))
    ready.sort(key=lambda p: p.index)
    return ready


async def _wait(event: asyncio.Event, timeout_s: float | None) -> None:
    if timeout_s is None:
        await event.wait()
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(timeout_s, 0.0)):
            await event.wait()


async def _control(
    cfg: SimConfig, registry: Registry, stop: asyncio.Event, no_more_requests: asyncio.Event
) -> None:
    """Requests for the duration (or until ``stop``), then let live trips finish."""
    await _wait(stop, cfg.duration_s or None)
    no_more_requests.set()
    deadline = time.monotonic() + cfg.drain_s
    while not stop.is_set() and registry.live_count() and time.monotonic() < deadline:
        await _wait(stop, min(0.5, deadline - time.monotonic()))


async def _view(
    cfg: SimConfig,
    snapshot: Callable[[], dict[str, Any]],
    out: TextIO,
    done: asyncio.Event,
) -> None:
    if cfg.view == "none":
        return
    every = cfg.view_every_s if cfg.view == "live" else max(cfg.view_every_s, 5.0)
    drawn = 0
    while not done.is_set():
        await _wait(done, every)
        if done.is_set():
            break
        s = snapshot()
        if cfg.view == "lines":
            print(render_line(s), file=out, flush=True)
            continue
        text = render_view(s)
        # Back to the first line of the previous drawing, clear to the end, draw again.
        up = f"\x1b[{drawn}F\x1b[J" if drawn else ""
        out.write(up + text + "\n")
        out.flush()
        drawn = text.count("\n") + 1


async def _bounded(calls: list[Callable[[], Awaitable[None]]], limit: int = 16) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    async with asyncio.TaskGroup() as tg:
        for call in calls:
            tg.create_task(one(call))


async def _check(
    cfg: SimConfig, api: Api, registry: Registry, errors_5xx: list[ServerError]
) -> list[Violation]:
    """Read every trip the phones do not know to be over, then apply the invariants."""

    def refresh(trip_id: str, token: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            try:
                trip = await api.trip(trip_id, token=token, op="final_read")
            except ApiError:
                return  # counted by Api; the trip is judged on what the phones saw
            except Exception as exc:
                logger.debug("final read of %s failed", trip_id, exc_info=True)
                api.stats.crashes[f"final_read {type(exc).__name__}"] += 1
                return
            if isinstance(trip, dict):
                registry.update(trip)

        return call

    await _bounded(
        [refresh(r.trip_id, r.rider_token) for r in registry.trips.values() if not r.ended]
    )
    now = time.monotonic()
    views = []
    for r in registry.trips.values():
        driver = (r.last or {}).get("driver_id") or None
        views.append(
            TripView(
                r.trip_id,
                r.state,
                age_s=now - r.requested_at,
                driver_id=driver,
                driver_working_it=driver is not None and registry.driving.get(driver) == r.trip_id,
            )
        )
    assignments = [a for r in registry.trips.values() if r.last and (a := assignment_of(r.last))]
    return [
        *unfinished_trips(views, dispatch_wait_s=cfg.dispatch_wait_s),
        *overlapping_assignments(assignments),
        *foreign_positions(registry.seen_positions, registry.assigned),
        *server_errors(errors_5xx),
    ]
