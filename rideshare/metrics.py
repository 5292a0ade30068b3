"""Prometheus metrics: the per-process HTTP endpoint and the shared gRPC server metrics.

Everything registers in prometheus_client's default registry, which the endpoint serves.
Names follow go-grpc-prometheus so that stock dashboards work; the process (rider, trip, ...)
is the scrape job, not a label.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

__all__ = [
    "GRPC_SERVER_HANDLED",
    "GRPC_SERVER_HANDLING_SECONDS",
    "start_metrics_server",
]

logger = logging.getLogger(__name__)

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)

GRPC_SERVER_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC's handler to its end (whole stream for streaming RPCs).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def start_metrics_server(host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve ``/metrics`` over HTTP on ``host:port`` from a daemon thread; port 0 disables it.

    Binds loopback by default: expose it further only behind whatever scrapes it.
    """
    if port == 0:
        return
    start_http_server(port, addr=host)
    logger.info("metrics on http://%s:%d/metrics", host, port)
