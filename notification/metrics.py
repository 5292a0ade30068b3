"""The notification service's Prometheus metrics, in one place (the gRPC server's own are in
``rideshare.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["DELIVERY_ATTEMPTS", "EVENTS_DEADLETTERED", "EVENTS_PROCESSED"]

EVENTS_PROCESSED = Counter(
    "notification_events_processed_total",
    "Events taken off the stream and acked, by result: notified (made notifications), "
    "read_model (updated a read model only), duplicate (seen before), ignored (not ours).",
    ["result"],
)
EVENTS_DEADLETTERED = Counter(
    "notification_events_deadlettered_total",
    "Events given up on after the delivery bound and copied to the dead-letter subject.",
)
DELIVERY_ATTEMPTS = Counter(
    "notification_delivery_attempts_total",
    "Push and SMS delivery attempts, by channel and result (sent, retry, failed).",
    ["channel", "result"],
)
