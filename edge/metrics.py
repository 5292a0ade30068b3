"""The edge's Prometheus metrics (served at /metrics with everything else in the registry).

With several workers (edge/workers.py) every worker writes its values into the files of
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the parent), and
/metrics on any worker serves the sum over all of them, so one scrape of the port sees the
whole edge: counters add up (a restarted worker's counts stay), the sockets gauge sums the
live workers. That mode has no process_* or python_gc_* metrics (they would be one
worker's); a single-process edge serves the default registry with them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "LOGIN_LOCKOUTS",
    "LOGIN_REFUSED",
    "POSITIONS_CONFLATED",
    "POSITIONS_DROPPED",
    "POSITIONS_FORWARDED",
    "POSITIONS_RECEIVED",
    "RATE_LIMITED",
    "RATE_LIMITER_FAILED_OPEN",
    "WS_CONNECTIONS",
    "WS_FRAMES_CONFLATED",
    "WS_FRAMES_DROPPED",
    "WS_POLICY_CLOSES",
    "exposition",
]

HTTP_REQUESTS = Counter(
    "edge_http_requests_total", "HTTP requests by route and status.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "edge_http_request_seconds",
    "HTTP request handling time by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RATE_LIMITED = Counter("edge_rate_limited_total", "Requests refused with 429.")
RATE_LIMITER_FAILED_OPEN = Counter(
    "edge_rate_limiter_failed_open_total",
    "Requests let through unchecked because Redis, which holds the buckets, did not answer.",
)
WS_CONNECTIONS = Gauge(
    "edge_ws_connections", "Open WebSockets by role.", ["role"], multiprocess_mode="livesum"
)
WS_FRAMES_DROPPED = Counter(
    "edge_ws_frames_dropped_total", "Position frames dropped because a socket fell behind."
)
WS_POLICY_CLOSES = Counter(
    "edge_ws_policy_closes_total",
    "WebSockets closed by a limit: flooding, replaced (per-user cap), rate_limited.",
    ["reason"],
)
WS_FRAMES_CONFLATED = Counter(
    "edge_ws_frames_conflated_total",
    "Frames (positions, pings) replaced by a newer one of their kind before a socket sent them.",
)
POSITIONS_RECEIVED = Counter(
    "edge_positions_received_total", "Driver positions received from driver sockets."
)
POSITIONS_CONFLATED = Counter(
    "edge_positions_conflated_total",
    "Driver positions replaced by a newer one of the same driver before they were forwarded.",
)
POSITIONS_FORWARDED = Counter(
    "edge_positions_forwarded_total", "Driver positions sent on to the location service."
)
POSITIONS_DROPPED = Counter(
    "edge_positions_dropped_total",
    "Driver positions dropped: more drivers waiting than the buffer holds.",
)
LOGIN_REFUSED = Counter(
    "edge_login_refused_total",
    "Logins and signups refused before any password was checked, by kind and limit.",
    ["kind", "reason"],
)
LOGIN_LOCKOUTS = Counter(
    "edge_login_lockouts_total", "Phone numbers locked out after failed logins in a row."
)


def exposition() -> bytes:
    """The text /metrics serves: this process's registry, or every worker's sum."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
