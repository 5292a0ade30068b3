"""The simulator's arithmetic: percentiles, rates, the summary and its renderings."""

from __future__ import annotations

import json

import pytest

from rideshare.simulate.stats import Latency, RateMeter, Stats, percentile, render_line, render_view


def test_percentiles_interpolate_between_closest_ranks() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 100.0
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_keeps_a_bounded_reservoir_but_counts_everything() -> None:
    lat = Latency(cap=100)
    for i in range(10_000):
        lat.add(float(i % 1000))
    assert lat.count == 10_000
    assert len(lat.samples) == 100
    assert lat.max == 999.0
    s = lat.summary()
    assert s["count"] == 10_000 and s["max_ms"] == 999.0
    assert s["p50_ms"] is not None and 200 < float(s["p50_ms"]) < 800
    assert Latency().summary()["p99_ms"] is None


def test_rate_meter_averages_over_its_window_and_forgets_old_seconds() -> None:
    meter = RateMeter(window_s=10)
    for t in range(100, 110):
        meter.add(t + 0.5, 5)
    assert meter.rate(109.9) == pytest.approx(5.0)
    assert meter.rate(125.0) == 0.0
    young = RateMeter(window_s=10)
    young.add(0.2, 4)
    assert young.rate(2.0, started=0.0) == pytest.approx(2.0)


def test_summary_is_json_and_both_views_render_it() -> None:
    stats = Stats(started=0.0)
    stats.count("trips_requested", 3)
    stats.count("positions_sent", 40)
    stats.tick("positions", 1.0, 40)
    stats.latencies["request_to_accept"].add(250.0)
    stats.errors["accept timeout"] += 1
    stats.conflicts["cancel 409 failed_precondition"] += 2
    s = stats.summary(
        10.0,
        online_drivers=4,
        trips_by_state={"completed": 2, "dispatching": 1},
        violations=[{"kind": "server_error", "detail": "POST /v1/trips -> 500 (x1)"}],
    )
    assert json.loads(json.dumps(s)) == s
    assert s["ok"] is False
    assert s["trips_by_state"]["completed"] == 2 and s["trips_by_state"]["no_drivers"] == 0
    assert s["mean_requests_per_s"] == 0.3
    view = render_view(s)
    assert "online drivers 4" in view and "request_to_accept" in view
    assert "accept timeout x1" in view and "VIOLATIONS 1" in view
    line = render_line(s)
    assert "\n" not in line and "completed 2" in line and "violations 1" in line


def test_the_summary_reports_retries_and_crashes_by_kind() -> None:
    stats = Stats(started=0.0)
    stats.retries["driver_signup 429 resource_exhausted"] += 3
    stats.crashes["driver KeyError"] += 1
    summary = stats.summary(10.0, online_drivers=0, trips_by_state={})
    assert summary["retries"] == {"driver_signup 429 resource_exhausted": 3}
    assert summary["crashes"] == {"driver KeyError": 1}
    assert summary["ok"] is True  # counted, not violations
    view = render_view(summary)
    assert "retried   driver_signup 429 resource_exhausted x3" in view
    assert "crashes   driver KeyError x1" in view
    assert "retried 3" in render_line(summary)


def test_the_summary_reports_pickups_rider_waits_and_the_matched_share() -> None:
    stats = Stats(started=0.0)
    for metres in (100.0, 200.0, 300.0, 400.0, 1000.0):
        stats.measures["pickup_distance_m"].add(metres)
    stats.measures["pickup_s"].add(60.0)
    stats.count("trips_requested", 4)
    stats.count("trips_matched", 3)
    summary = stats.summary(10.0, online_drivers=1, trips_by_state={})
    dispatch = summary["dispatch"]
    assert dispatch["pickup_distance_m"] == {"count": 5, "mean": 400.0, "p90": 760.0}
    assert dispatch["pickup_s"]["mean"] == 60.0
    assert dispatch["rider_wait_s"] == {"count": 0, "mean": None, "p90": None}
    assert dispatch["matched_share"] == 0.75
    assert "matched 75%" in render_view(summary)
