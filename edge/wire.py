"""WebSocket message formats of the edge, and their parsing. Pure: no I/O.

Every message is one JSON object (a text frame) with a ``"type"``.

Client -> edge (both sockets)
  {"type": "auth", "token": "<jwt>"}   first message, when the token is not in ?token=
  {"type": "pong"}                     optional answer to a ping; ignored

Driver app -> edge (/v1/ws/driver)
  {"type": "position", "lat": 52.52, "lng": 13.40, "heading": 90.0, "speed_mps": 8.3,
   "accuracy_m": 5.0, "ts_ms": 1760000000000}
      lat/lng required; heading [0, 360), speed_mps >= 0, accuracy_m >= 0 default 0;
      ts_ms (fix time, ms since the epoch) defaults to the edge's receive time.

Edge -> driver app
  {"type": "offer", "trip_id", "offer_id", "rider_id", "pickup": {"lat","lng"}, "dropoff",
   "pickup_address", "dropoff_address", "vehicle_class", "fare": {"amount_minor","currency"},
   "distance_to_pickup_m", "attempt", "expires_at": "<ISO 8601>", "expires_at_ms"}
  {"type": "offer_ended", "trip_id", "offer_id", "reason": "expired|declined|trip_cancelled|
   driver_offline|trip_ended"}
  {"type": "trip", "event": "trip.accepted" | ... | "snapshot", "trip": {<TripOut>}}
  {"type": "notification", "notification": {<NotificationOut>}}
  {"type": "error", "code", "message"}
  {"type": "ping", "ts_ms"}            every RIDESHARE_WS_PING_S (4 s); reconnect after ~7 s
                                       of silence

Edge -> rider app (/v1/ws/rider)
  {"type": "trip", "event", "trip"}    as above; the pending offer is not shown to riders
  {"type": "driver_position", "driver_id", "lat", "lng", "heading", "speed_mps", "ts_ms"}
      only the rider's own assigned driver, from ACCEPTED until the trip ends
  {"type": "notification", ...}, {"type": "error", ...}, {"type": "ping", ...}

On (re)connect the edge sends a snapshot first (the live trip as a "trip" frame with event
"snapshot", a pending offer for a driver, the driver's last known position for a rider), then
deltas. Malformed messages get an error frame (codes: bad_json, bad_message, unknown_type,
too_large, rate_limited, invalid_position) and the socket stays open. Close codes: 4401 bad or
missing token, 4403 wrong role, 1008 slow consumer (its send queue overflowed with non-position
frames), 1001 the edge is shutting down.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FrameError",
    "Position",
    "error_frame",
    "parse_frame",
    "parse_position",
]

MAX_FUTURE_MS = 30_000


class FrameError(ValueError):
    """A client message the edge cannot use; becomes an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lng: float
    heading: float
    speed_mps: float
    accuracy_m: float
    ts_ms: int


def error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def parse_frame(text: str | bytes, *, max_bytes: int) -> dict[str, Any]:
    """The JSON object of one client message, with a string ``type``."""
    if len(text) > max_bytes:
        raise FrameError("too_large", f"message larger than {max_bytes} bytes")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise FrameError("bad_json", "message is not valid JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("bad_message", 'message must be a JSON object with a string "type"')
    return frame


def _number(frame: dict[str, Any], key: str, default: float | None) -> float:
    value = frame.get(key, default)
    if value is None:
        raise FrameError("invalid_position", f"{key} is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FrameError("invalid_position", f"{key} must be a finite number")
    return float(value)


def parse_position(frame: dict[str, Any], *, now_ms: int) -> Position:
    """A driver's position message, range-checked like the location service checks it."""
    lat = _number(frame, "lat", None)
    lng = _number(frame, "lng", None)
    heading = _number(frame, "heading", 0.0)
    speed = _number(frame, "speed_mps", 0.0)
    accuracy = _number(frame, "accuracy_m", 0.0)
    ts = _number(frame, "ts_ms", float(now_ms))
    if not -90.0 <= lat <= 90.0:
        raise FrameError("invalid_position", f"lat {lat} not in [-90, 90]")
    if not -180.0 <= lng <= 180.0:
        raise FrameError("invalid_position", f"lng {lng} not in [-180, 180]")
    if not 0.0 <= heading < 360.0:
        raise FrameError("invalid_position", f"heading {heading} not in [0, 360)")
    if speed < 0.0 or accuracy < 0.0:
        raise FrameError("invalid_position", "speed_mps and accuracy_m must be >= 0")
    if ts <= 0 or ts > now_ms + MAX_FUTURE_MS:
        raise FrameError("invalid_position", "ts_ms is missing or in the future")
    return Position(lat, lng, heading, speed, accuracy, int(ts))
