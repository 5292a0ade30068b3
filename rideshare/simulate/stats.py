"""What the simulator measures, the live terminal view and the final summary. Pure: callers
pass the time in, so the arithmetic is testable without clocks."""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DISPATCH_MEASURES",
    "LATENCIES",
    "Latency",
    "RateMeter",
    "Stats",
    "percentile",
    "render_line",
    "render_view",
]

# name -> what it measures (milliseconds)
MAX_5XX_KEPT = 2_000
LATENCIES = {
    "request_to_offer": "trip requested -> first offer on a driver's socket",
    "request_to_accept": "trip requested -> the driver's accept answered",
    "position_delivery": "driver sent a position -> the rider's socket got it",
}
# name -> what it measures (in simulated units: the phones move on the simulated clock)
DISPATCH_MEASURES = {
    "pickup_distance_m": "driver's straight line to the pickup when they accepted (m)",
    "pickup_s": "driver accepted -> arrived at the pickup (simulated s)",
    "rider_wait_s": "trip requested -> driver arrived at the pickup (simulated s)",
}
TRIP_STATES = (
    "requested",
    "dispatching",
    "accepted",
    "arrived",
    "in_progress",
    "completed",
    "cancelled",
    "no_drivers",
)


def percentile(samples: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks;
    None without samples."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} not in [0, 100]")
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Latency:
    """Samples of one latency; past ``cap`` a uniform reservoir keeps memory bounded."""

    cap: int = 100_000
    samples: list[float] = field(default_factory=list)
    count: int = 0
    max: float = 0.0
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, value_ms: float) -> None:
        self.count += 1
        self.max = max(self.max, value_ms)
        if len(self.samples) < self.cap:
            self.samples.append(value_ms)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.cap:
            self.samples[slot] = value_ms

    def distribution(self) -> dict[str, float | int | None]:
        """Count, mean and p90 of samples in any unit (the dispatch measures)."""
        p90 = percentile(self.samples, 90)
        return {
            "count": self.count,
            "mean": round(sum(self.samples) / len(self.samples), 1) if self.samples else None,
            "p90": None if p90 is None else round(p90, 1),
        }

    def summary(self) -> dict[str, float | int | None]:
        def pct(p: float) -> float | None:
            v = percentile(self.samples, p)
            return None if v is None else round(v, 1)

        return {
            "count": self.count,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(self.max, 1) if self.count else None,
        }


@dataclass
class RateMeter:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    window_s: int = 10
    _buckets: deque[list[int]] = field(default_factory=deque)  # [second, count]

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._trim(second)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()

    def rate(self, now: float, *, started: float | None = None) -> float:
        """Mean rate over the window (or since ``started`` when that is shorter)."""
        second = int(now)
        self._trim(second)
        span = float(self.window_s)
        if started is not None:
            span = min(span, max(now - started, 1.0))
        return sum(n for _, n in self._buckets) / span


@dataclass
class Stats:
    """Every counter of one run. ``errors`` are failures (5xx, timeouts, unexpected 4xx);
    ``conflicts`` are the 409/404s a real app meets in races (an offer that just expired,
    a cancel that crossed the driver's accept) and handles; ``retries`` are the answers an app
    waits out and tries again (429, 503 with Retry-After, 504, a dropped connection), and
    ``crashes`` the app code that failed unexpectedly (counted, the phone carries on).
    ``server_5xx`` keeps every 5xx answer with its wall-clock time (the first
    ``MAX_5XX_KEPT``), so that a chaos run can tell outage answers inside a fault from others."""

    started: float
    counters: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    server_5xx: list[dict[str, Any]] = field(default_factory=list)
    latencies: dict[str, Latency] = field(default_factory=lambda: {k: Latency() for k in LATENCIES})
    measures: dict[str, Latency] = field(
        default_factory=lambda: {k: Latency() for k in DISPATCH_MEASURES}
    )
    meters: dict[str, RateMeter] = field(
        default_factory=lambda: {"requests": RateMeter(), "positions": RateMeter()}
    )

    def note_5xx(self, method: str, path: str, status: int, code: str) -> None:
        if len(self.server_5xx) < MAX_5XX_KEPT:
            at = round(time.time(), 3)
            self.server_5xx.append(
                {"at": at, "method": method, "path": path, "status": status, "code": code}
            )

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def tick(self, meter: str, now: float, n: int = 1) -> None:
        self.meters[meter].add(now, n)

    def summary(
        self,
        now: float,
        *,
        online_drivers: int,
        trips_by_state: Mapping[str, int],
        violations: Sequence[Mapping[str, str]] = (),
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Everything as one JSON-able dict (the live view and --json-out both read it)."""
        elapsed = max(now - self.started, 1e-9)
        return {
            "elapsed_s": round(elapsed, 1),
            "online_drivers": online_drivers,
            "trips_by_state": {s: int(trips_by_state.get(s, 0)) for s in TRIP_STATES},
            "requests_per_s": round(self.meters["requests"].rate(now, started=self.started), 2),
            "positions_per_s": round(self.meters["positions"].rate(now, started=self.started), 1),
            "mean_requests_per_s": round(self.counters["trips_requested"] / elapsed, 3),
            "mean_positions_per_s": round(self.counters["positions_sent"] / elapsed, 1),
            "latency_ms": {k: v.summary() for k, v in self.latencies.items()},
            "dispatch": {
                **{k: v.distribution() for k, v in self.measures.items()},
                "matched_share": (
                    round(self.counters["trips_matched"] / self.counters["trips_requested"], 3)
                    if self.counters["trips_requested"]
                    else None
                ),
            },
            "counters": dict(sorted(self.counters.items())),
            "errors": dict(sorted(self.errors.items())),
            "conflicts": dict(sorted(self.conflicts.items())),
            "retries": dict(sorted(self.retries.items())),
            "crashes": dict(sorted(self.crashes.items())),
            "server_5xx": list(self.server_5xx),
            "violations": list(violations),
            "ok": not violations,
            **({"config": dict(config)} if config is not None else {}),
        }


def _ms(value: object) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_view(s: Mapping[str, Any], *, title: str = "rideshare simulator") -> str:
    """The live view: a block of text redrawn in place (the caller adds the ANSI codes)."""
    states = s["trips_by_state"]
    lines = [
        f"{title}  {s['elapsed_s']:.0f}s   online drivers {s['online_drivers']}",
        "trips     " + "  ".join(f"{k} {states[k]}" for k in TRIP_STATES),
        f"rates     requests/s {s['requests_per_s']:.2f}   positions/s {s['positions_per_s']:.1f}",
        f"{'latency (ms)':<24}{'n':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}",
    ]
    for name, lat in s["latency_ms"].items():
        lines.append(
            f"  {name:<22}{lat['count']:>7}{_ms(lat['p50_ms']):>8}{_ms(lat['p90_ms']):>8}"
            f"{_ms(lat['p99_ms']):>8}{_ms(lat['max_ms']):>8}"
        )
    d = s.get("dispatch")
    if d:
        share = d["matched_share"]
        lines.append(
            "dispatch  "
            + "   ".join(
                f"{name} mean {_ms(d[name]['mean'])} p90 {_ms(d[name]['p90'])}"
                for name in DISPATCH_MEASURES
            )
            + f"   matched {'-' if share is None else f'{share:.0%}'}"
        )
    for label, key in (
        ("errors", "errors"),
        ("conflicts", "conflicts"),
        ("retried", "retries"),
        ("crashes", "crashes"),
    ):
        items = s.get(key, {})
        text = ", ".join(f"{k} x{v}" for k, v in items.items()) if items else "none"
        lines.append(f"{label:<10}{text}")
    if s["violations"]:
        lines.append(f"VIOLATIONS {len(s['violations'])}: {s['violations'][0]['detail']}")
    return "\n".join(lines)


def render_line(s: Mapping[str, Any]) -> str:
    """One line of progress, for logs and pipes (no cursor movement)."""
    st = s["trips_by_state"]
    live = sum(st[k] for k in ("requested", "dispatching", "accepted", "arrived", "in_progress"))
    acc = s["latency_ms"]["request_to_accept"]
    errors = sum(s["errors"].values())
    retried = sum(s.get("retries", {}).values())
    return (
        f"simulator {s['elapsed_s']:.0f}s: {s['online_drivers']} drivers online, "
        f"trips live {live} completed {st['completed']} cancelled {st['cancelled']} "
        f"no_drivers {st['no_drivers']}, {s['positions_per_s']:.0f} positions/s, "
        f"request->accept p99 {_ms(acc['p99_ms'])} ms, errors {errors}, retried {retried}, "
        f"violations {len(s['violations'])}"
    )
