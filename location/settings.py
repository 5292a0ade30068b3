"""The location service's own settings (``RIDESHARE_DRIVER_STALE_S`` and friends), beside the
``ServiceSettings`` every service shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from location.domain import TRACK_CAP, TRACK_MAX_SPEED_MPS
from rideshare.settings import env_addresses, env_float, env_int, env_str

__all__ = ["LocationSettings"]


@dataclass(frozen=True)
class LocationSettings:
    """The location service's own rules; tests build it directly."""

    stale_s: float = 30.0
    max_future_s: float = 30.0
    watch_queue: int = 256
    sweep_interval_s: float = 1.0
    consumer_name: str = "location"
    """The durable JetStream consumer all copies share, and the owner of its event claims."""
    # Longer than any offer lives (RIDESHARE_OFFER_TIMEOUT_S): an older OFFERED hold was left
    # by a dispatcher that died, and the driver is released.
    offer_hold_max_s: float = 120.0
    # The systems of record availability is rebuilt from when Redis comes back empty; an
    # empty address turns the rebuild off (tests of this service alone).
    driver_addr: str = "127.0.0.1:50052"
    trip_addr: str = "127.0.0.1:50053"
    rebuild_check_s: float = 1.0
    """How often each copy checks that Redis still holds the index (its marker)."""
    rebuild_timeout_s: float = 5.0
    """Deadline of each page read from the driver and trip services during a rebuild."""
    track_cap: int = TRACK_CAP
    """Fixes kept per trip for its measured distance (the newest ones)."""
    track_max_speed_mps: float = TRACK_MAX_SPEED_MPS
    """A step between two fixes of a track faster than this is a jump, and ignored."""
    shards: int = 1
    """Hash-tagged shards of the Redis keys (location/store.py): 1 on one Valkey; on a
    Valkey Cluster several per master, so the drivers spread over the masters."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocationSettings:
        """The settings from ``RIDESHARE_*`` variables (``env``, or the process's)."""
        return cls(
            stale_s=env_float("RIDESHARE_DRIVER_STALE_S", 30.0, minimum=1.0, env=env),
            max_future_s=env_float("RIDESHARE_POSITION_MAX_FUTURE_S", 30.0, minimum=0.0, env=env),
            watch_queue=env_int("RIDESHARE_WATCH_QUEUE", 256, minimum=1, env=env),
            sweep_interval_s=env_float("RIDESHARE_STALE_SWEEP_S", 1.0, minimum=0.05, env=env),
            consumer_name=env_str("RIDESHARE_LOCATION_CONSUMER", "location", env=env),
            offer_hold_max_s=env_float("RIDESHARE_OFFER_HOLD_MAX_S", 120.0, minimum=1.0, env=env),
            driver_addr=env_addresses("RIDESHARE_DRIVER_ADDR", "127.0.0.1:50052", env=env),
            trip_addr=env_addresses("RIDESHARE_TRIP_ADDR", "127.0.0.1:50053", env=env),
            rebuild_check_s=env_float(
                "RIDESHARE_INDEX_CHECK_S", 1.0, minimum=0.05, maximum=60.0, env=env
            ),
            rebuild_timeout_s=env_float(
                "RIDESHARE_INDEX_REBUILD_TIMEOUT_S", 5.0, minimum=0.1, env=env
            ),
            track_cap=env_int("RIDESHARE_TRACK_CAP", TRACK_CAP, minimum=10, env=env),
            track_max_speed_mps=env_float(
                "RIDESHARE_TRACK_MAX_SPEED_MPS", TRACK_MAX_SPEED_MPS, minimum=1.0, env=env
            ),
            shards=env_int("RIDESHARE_LOCATION_SHARDS", 1, minimum=1, maximum=1024, env=env),
        )

    @property
    def stale_ms(self) -> int:
        return int(self.stale_s * 1000)

    @property
    def max_future_ms(self) -> int:
        return int(self.max_future_s * 1000)
