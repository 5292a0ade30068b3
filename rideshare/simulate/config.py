"""One run's settings (the command line builds it; tests and the demo construct it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rideshare.simulate.city import BERLIN, BBox

__all__ = ["SimConfig", "View"]

View = Literal["live", "lines", "none"]


@dataclass(frozen=True)
class SimConfig:
    edge_url: str
    drivers: int = 20
    riders: int = 10
    rate: float = 0.5
    """Mean trip requests per wall second over all riders (Poisson; a rider on a trip waits)."""
    duration_s: float = 60.0
    """Wall seconds of requests; 0 runs until stopped."""
    drain_s: float = 30.0
    """After the duration, wall seconds to let live trips finish before the checks."""
    speedup: float = 10.0
    """Simulated seconds per wall second (motion, boarding, think times)."""
    accept_prob: float = 0.9
    cancel_prob: float = 0.1
    seed: int = 1
    city: BBox = BERLIN
    think_max_s: float = 3.0
    """A driver looks at an offer 2-8 simulated seconds, at most this many wall seconds."""
    min_report_s: float = 0.5
    """Wall seconds between two position reports of one driver at least."""
    http_timeout_s: float = 10.0
    ws_silence_s: float = 7.0
    dispatch_wait_s: float = 200.0
    """How long a trip may plausibly wait for a driver (the trip service's max wait + slack)."""
    signup_concurrency: int = 8
    poll_s: float = 10.0
    """A rider re-reads its trip when its socket was silent about it this long (wall s)."""
    stripe_api_base: str = ""
    """The payment provider the rider apps tokenize their test card with after signing up;
    "" adds no card (and the edge refuses their bookings: payment_method_required)."""
    json_out: Path | None = None
    view: View = "live"
    view_every_s: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            (self.drivers >= 0, "drivers must be >= 0"),
            (self.riders >= 0, "riders must be >= 0"),
            (self.rate > 0, "rate must be > 0"),
            (self.duration_s >= 0, "duration must be >= 0"),
            (self.drain_s >= 0, "drain must be >= 0"),
            (self.speedup > 0, "speedup must be > 0"),
            (0 <= self.accept_prob <= 1, "accept-prob must be in [0, 1]"),
            (0 <= self.cancel_prob <= 1, "cancel-prob must be in [0, 1]"),
            (self.min_report_s > 0, "min-report-s must be > 0"),
            (self.think_max_s >= 0, "think-max-s must be >= 0"),
            (self.signup_concurrency >= 1, "signup-concurrency must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["city"] = str(self.city)
        d["json_out"] = str(self.json_out) if self.json_out else None
        return d
