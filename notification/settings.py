"""The notification service's own settings (``RIDESHARE_NOTIFICATION_*``), beside the
``ServiceSettings`` every service shares: the consumer's and the delivery worker's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rideshare.settings import env_float, env_int, env_str

__all__ = ["DeliverySettings", "NotificationSettings"]


@dataclass(frozen=True)
class DeliverySettings:
    """How the delivery worker retries: ``max_attempts`` in all, waits doubling from
    ``retry_base_s`` up to ``retry_cap_s``; each provider call is bounded by
    ``send_timeout_s``."""

    max_attempts: int = 6
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    poll_s: float = 1.0
    batch: int = 100
    send_timeout_s: float = 10.0

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is left alone: past any send's deadline."""
        return self.send_timeout_s * 3


@dataclass(frozen=True)
class NotificationSettings:
    """The notification service's own settings; tests build it directly."""

    schema: str = "notification"
    durable: str = "notification"
    """The durable JetStream consumer all copies share, and the owner of its event claims."""
    max_deliver: int = 5
    ack_wait_s: float = 10.0
    batch: int = 100
    fetch_timeout_s: float = 1.0
    backoff_s: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    watch_queue: int = 256
    delivery: DeliverySettings = field(default_factory=DeliverySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NotificationSettings:
        """The settings from ``RIDESHARE_*`` variables (``env``, or the process's)."""
        return cls(
            schema=env_str("RIDESHARE_NOTIFICATION_SCHEMA", "notification", env=env),
            durable=env_str("RIDESHARE_NOTIFICATION_DURABLE", "notification", env=env),
            max_deliver=env_int("RIDESHARE_NOTIFICATION_MAX_DELIVER", 5, minimum=1, env=env),
            ack_wait_s=env_float("RIDESHARE_NOTIFICATION_ACK_WAIT_S", 10.0, minimum=1.0, env=env),
            batch=env_int("RIDESHARE_NOTIFICATION_BATCH", 100, minimum=1, maximum=1000, env=env),
            watch_queue=env_int("RIDESHARE_NOTIFICATION_WATCH_QUEUE", 256, minimum=1, env=env),
            delivery=DeliverySettings(
                max_attempts=env_int(
                    "RIDESHARE_NOTIFICATION_DELIVERY_ATTEMPTS", 6, minimum=1, env=env
                ),
                retry_base_s=env_float(
                    "RIDESHARE_NOTIFICATION_RETRY_BASE_S", 1.0, minimum=0.01, env=env
                ),
                retry_cap_s=env_float(
                    "RIDESHARE_NOTIFICATION_RETRY_CAP_S", 300.0, minimum=0.01, env=env
                ),
                poll_s=env_float("RIDESHARE_NOTIFICATION_POLL_S", 1.0, minimum=0.01, env=env),
            ),
        )
