"""The location service's Prometheus metrics of its live path (the gRPC server's own are in
``rideshare.metrics``, the index rebuild's in ``location.rebuild``)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["POSITIONS_SUPERSEDED"]

POSITIONS_SUPERSEDED = Counter(
    "location_positions_superseded_total",
    "Updates of ReportPositions replaced by a newer one of the same driver while they waited "
    "for the write to Redis (latest-wins conflation), never stored nor published.",
)
