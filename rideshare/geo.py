"""What a valid driver position is: the one rule, shared by the location service (which
stores positions) and the edge (which refuses a bad one on the socket, before batching it).

Pure: no I/O. Ordering against the last stored position is not checked here: that needs the
location store.
"""

from __future__ import annotations

import enum
import math

__all__ = [
    "EARTH_RADIUS_M",
    "MAX_FUTURE_MS",
    "MAX_LAT",
    "PositionProblem",
    "check_position",
    "distance_m",
]

# Redis GEO stores Web Mercator cells: it refuses latitudes beyond this (no city lies there).
MAX_LAT = 85.05112878
# Mean earth radius (IUGG), the usual choice for great-circle distances.
EARTH_RADIUS_M = 6_371_008.8
# How far ahead of the receiver's clock a fix time may be (phones' clocks drift).
MAX_FUTURE_MS = 30_000


class PositionProblem(enum.Enum):
    """What is wrong with a position; the names match location's RejectReason values."""

    INVALID_COORDINATES = "invalid_coordinates"
    INVALID_HEADING = "invalid_heading"
    INVALID_MOTION = "invalid_motion"
    INVALID_TIMESTAMP = "invalid_timestamp"


def check_position(
    lat: float,
    lng: float,
    heading: float,
    speed_mps: float,
    accuracy_m: float,
    ts_ms: int,
    *,
    now_ms: int,
    max_future_ms: int = MAX_FUTURE_MS,
) -> tuple[PositionProblem, str] | None:
    """None when the fix is well formed, else what is wrong and a detail naming the value.

    ``ts_ms`` is the fix time in ms since the epoch; it may be at most ``max_future_ms``
    ahead of ``now_ms``. NaN and infinities fail every range check.
    """
    # `not a <= x <= b` is also true for NaN, so finiteness comes for free.
    if not -MAX_LAT <= lat <= MAX_LAT:
        return PositionProblem.INVALID_COORDINATES, f"lat {lat} not in [-{MAX_LAT}, {MAX_LAT}]"
    if not -180.0 <= lng <= 180.0:
        return PositionProblem.INVALID_COORDINATES, f"lng {lng} not in [-180, 180]"
    if not 0.0 <= heading < 360.0:
        return PositionProblem.INVALID_HEADING, f"heading {heading} not in [0, 360)"
    if not 0.0 <= speed_mps < math.inf:
        return PositionProblem.INVALID_MOTION, f"speed_mps {speed_mps} must be finite and >= 0"
    if not 0.0 <= accuracy_m < math.inf:
        return PositionProblem.INVALID_MOTION, f"accuracy_m {accuracy_m} must be finite and >= 0"
    if ts_ms <= 0:
        return PositionProblem.INVALID_TIMESTAMP, "the fix time (ts_ms) is required"
    if ts_ms > now_ms + max_future_ms:
        ahead = (ts_ms - now_ms) / 1000
        return PositionProblem.INVALID_TIMESTAMP, f"the fix time is {ahead:.1f}s in the future"
    return None


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle (haversine) distance between two points in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlam = math.radians(lng2 - lng1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    # min() guards asin against h creeping past 1.0 by rounding for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
