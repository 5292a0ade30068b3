"""The location service's Prometheus metrics of its live path (the gRPC server's own are in
``rideshare.metrics``, the index rebuild's in ``location.rebuild``)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["BATCH_ITEMS", "POSITIONS_SUPERSEDED"]

POSITIONS_SUPERSEDED = Counter(
    "location_positions_superseded_total",
    "Updates of ReportPositions replaced by a newer one of the same driver while they waited "
    "for the write to Redis (latest-wins conflation), never stored nor published.",
)

BATCH_ITEMS = Counter(
    "location_batch_items_total",
    "Items of the batch calls, which grpc_server_handled_total counts once per call: the "
    "searches of NearestDriversBatch (outcome searched), the holds of ReserveDrivers (outcome "
    "reserved, or refused: the driver was not AVAILABLE).",
    ["grpc_method", "outcome"],
)
