"""WebSocket message formats of the edge: every frame is built and parsed here. Pure: no I/O.

Every message is one JSON object (a text frame) with a ``"type"``.

Client -> edge (both sockets)
  {"type": "auth", "token": "<jwt>"}   first message, when the token is not in ?token=
  {"type": "pong"}                     optional answer to a ping; ignored

Driver app -> edge (/v1/ws/driver)
  {"type": "position", "lat": 52.52, "lng": 13.40, "heading": 90.0, "speed_mps": 8.3,
   "accuracy_m": 5.0, "ts_ms": 1760000000000}
      lat/lng required (lat within +-85.05112878: Redis GEO's range); heading [0, 360),
      speed_mps >= 0, accuracy_m >= 0 default 0; ts_ms (fix time, ms since the epoch, at most
      30 s ahead) defaults to the edge's receive time. The rule is rideshare/geo.py's, the
      location service's own.

Edge -> driver app
  {"type": "offer", "trip_id", "offer_id", "rider_id", "pickup": {"lat","lng"}, "dropoff",
   "pickup_address", "dropoff_address", "vehicle_class", "fare": {"amount_minor","currency"},
   "distance_to_pickup_m", "attempt", "expires_at": "<ISO 8601>", "expires_at_ms"}
  {"type": "offer_ended", "trip_id", "offer_id", "reason": "expired|declined|trip_cancelled|
   driver_offline|trip_ended|accepted_elsewhere"}
      once for every offer that ends without being accepted: the driver did not answer in
      time, declined, the trip was cancelled (rider, admin or system), the driver went
      offline, the trip was given up (NO_DRIVERS), or (parallel offers,
      RIDESHARE_DISPATCH_PARALLEL_OFFERS) another driver accepted first. An accepted offer
      does not end this way: its "trip" frame (trip.accepted) follows.
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

Edge <-> map viewer (/v1/ws/viewer?bbox=minLat,minLng,maxLat,maxLng; admin tokens only)
  The live map of drivers inside a box, for operators (edge/viewer_feed.py). The box is in
  the REST API's order (south-west corner, then north-east): latitudes within +-85.05112878,
  longitudes within +-180, min <= max (no antimeridian crossing); without ?bbox the world.
  {"type": "viewer_snapshot", "bbox": [minLat, minLng, maxLat, maxLng], "truncated": false,
   "drivers": [<driver>, ...]}
      first, and again after every bbox message: every driver in the box (at most
      RIDESHARE_VIEWER_MAX_DRIVERS, 5000; truncated says more were there). It replaces what
      the viewer shows.
  {"type": "viewer_delta", "appeared": [<driver>, ...], "moved": [<driver>, ...],
   "left": ["<driver id>", ...]}
      what changed since the previous frame, at most RIDESHARE_VIEWER_FRAMES_PER_S (2) frames
      a second: the newest position of each driver only (a driver who moved ten times in
      between is sent once). "left": moved out of the box, or silent for 30 s (gone offline
      or lost: the location service's own staleness).
  <driver> = {"driver_id", "lat", "lng", "heading", "speed_mps", "client_ts_ms",
              "server_ts_ms", "availability": "available|offered|on_trip|unknown",
              "vehicle_class"}  (as GET /v1/admin/drivers shows it)
  Viewer -> edge: {"type": "bbox", "bbox": "minLat,minLng,maxLat,maxLng"} follows the map
  when it moves (a new snapshot follows); a bad box gets an error frame invalid_bbox and the
  socket keeps its old box. {"type": "pong"} and {"type": "auth", ...} as on the other
  sockets. Pings as on the other sockets when nothing else was sent. A bad ?bbox closes the
  socket with 4400 after an error frame invalid_bbox. The snapshot's read failing (location
  down) sends an error frame "unavailable" and is retried every 2 s.

On (re)connect the edge sends a snapshot first (the live trip as a "trip" frame with event
"snapshot", a pending offer for a driver, the driver's last known position for a rider), then
deltas.

Malformed messages get an error frame and the socket stays open. Codes: bad_json (not JSON,
or not UTF-8; NaN, Infinity and numbers beyond a double's range are not JSON), too_deep
(arrays/objects nested deeper than MAX_DEPTH = 32), bad_message (not an object with a
string "type"), unknown_type, too_large (over 4096 bytes), invalid_position,
rate_limited (over RIDESHARE_WS_MSGS_PER_S, burst RIDESHARE_WS_MSGS_BURST; the frame is
dropped). Before authentication, any message but a valid auth message gets an error frame
"unauthenticated" and the close 4401.

Limits and refusals:
  HTTP 429 (JSON error body, Retry-After) instead of the upgrade: the rate bucket of the
      client address or of the ?token= was empty (a handshake takes from the HTTP API's
      buckets like a request). Retry after Retry-After seconds.
  4429  the same, for a socket authenticated by its first message (the token is only known
      then): an error frame rate_limited, then the close. Retry with backoff.
  4409  replaced: the user opened more than RIDESHARE_WS_MAX_PER_USER (4) sockets (on every
      edge process together); the oldest is closed (a phone that reconnects after a network change
      must not be locked out by its own half-dead socket). Do not reconnect automatically.
  1008  policy violation: the socket kept exceeding its message rate (more than
      RIDESHARE_WS_FLOOD_FRAMES (100) frames over the rate, forgiven at one per second), or
      it did not read its frames (its send queue overflowed with non-position frames).
      The close reason says which.

Close codes: 4400 bad query (the viewer's ?bbox), 4401 bad or missing token, 4403 wrong role,
4409 replaced by a newer socket of the same user, 4429 rate limited, 1008 policy violation
(flooding, slow consumer), 1001 the edge is shutting down.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from edge import convert
from protos.location.v1 import location_pb2
from protos.notification.v1 import notification_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import geo

__all__ = [
    "CLOSE_BAD_QUERY",
    "CLOSE_FLOODING",
    "CLOSE_FORBIDDEN",
    "CLOSE_RATE_LIMITED",
    "CLOSE_REPLACED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_UNAUTHENTICATED",
    "MAX_DEPTH",
    "WORLD_BBOX",
    "Bbox",
    "FrameError",
    "Position",
    "error_frame",
    "notification_frame",
    "offer_ended_frame",
    "offer_frame",
    "parse_bbox",
    "parse_frame",
    "parse_position",
    "ping_frame",
    "position_frame",
    "trip_frame",
    "viewer_delta_frame",
    "viewer_snapshot_frame",
]

CLOSE_BAD_QUERY = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_REPLACED = 4409
CLOSE_RATE_LIMITED = 4429
CLOSE_FLOODING = 1008
CLOSE_SLOW_CONSUMER = 1008

# msgspec parses a frame in ~1.2 us where json.loads takes ~5 (docs/PERFORMANCE.md); both
# build the same dict. It is stricter: NaN, Infinity and numbers beyond a double are not JSON.
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

# Nesting a client message may have; the protocol's own messages nest at most 2 levels.
MAX_DEPTH = 32
# The depth scan: escapes go first (so an escaped quote cannot end a string), then strings
# (their brackets do not nest anything), then everything but brackets.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")

_OFFER_END_REASONS = {
    value: name.removeprefix("OFFER_END_REASON_").lower()
    for name, value in trip_events.OfferEndReason.items()
}


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


# -- edge -> app ------------------------------------------------------------------------------


def error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def ping_frame(now_ms: int) -> str:
    """The heartbeat, already encoded: one text is sent to every socket of a ping slot."""
    return json.dumps({"type": "ping", "ts_ms": now_ms})


def offer_frame(o: trip_events.TripOffered) -> dict[str, Any]:
    """An offer for the driver app, from the trip.offered event."""
    expires = o.expires_at.ToDatetime() if o.HasField("expires_at") else None
    return {
        "type": "offer",
        "trip_id": o.trip_id,
        "offer_id": o.offer_id,
        "rider_id": o.rider_id,
        "pickup": {"lat": o.pickup.lat, "lng": o.pickup.lng},
        "dropoff": {"lat": o.dropoff.lat, "lng": o.dropoff.lng},
        "pickup_address": o.pickup_address or None,
        "dropoff_address": o.dropoff_address or None,
        "vehicle_class": convert.vehicle_class_name(o.vehicle_class),
        "fare": {"amount_minor": o.fare.amount_minor, "currency": o.fare.currency},
        "distance_to_pickup_m": o.distance_to_pickup_m,
        "attempt": o.attempt,
        "expires_at": expires.isoformat() + "Z" if expires else None,
        "expires_at_ms": o.expires_at.ToMilliseconds() if o.HasField("expires_at") else None,
    }


def offer_ended_frame(e: trip_events.TripOfferEnded) -> dict[str, Any]:
    return {
        "type": "offer_ended",
        "trip_id": e.trip_id,
        "offer_id": e.offer_id,
        "reason": _OFFER_END_REASONS.get(e.reason, "unspecified"),
    }


def trip_frame(trip: trip_pb2.Trip, event: str, *, rider: bool) -> dict[str, Any]:
    """A trip update; a rider never sees the pending offer."""
    return {
        "type": "trip",
        "event": event,
        "trip": convert.trip_out(trip, show_offer=not rider).model_dump(mode="json"),
    }


def notification_frame(n: notification_pb2.Notification) -> dict[str, Any]:
    return {
        "type": "notification",
        "notification": convert.notification_out(n).model_dump(mode="json"),
    }


def position_frame(p: location_pb2.DriverPosition) -> str:
    """The driver's position for the rider app, already encoded: one text feeds every socket
    that watches the driver."""
    return _encode(
        {
            "type": "driver_position",
            "driver_id": p.driver_id,
            "lat": p.lat,
            "lng": p.lng,
            "heading": p.heading,
            "speed_mps": p.speed_mps,
            "ts_ms": p.client_ts_ms,
        }
    ).decode()


def viewer_snapshot_frame(
    box: Bbox, drivers: list[location_pb2.DriverPosition], *, truncated: bool
) -> dict[str, Any]:
    return {
        "type": "viewer_snapshot",
        "bbox": [box.min_lat, box.min_lng, box.max_lat, box.max_lng],
        "truncated": truncated,
        "drivers": [_viewer_driver(p) for p in drivers],
    }


def viewer_delta_frame(
    appeared: list[location_pb2.DriverPosition],
    moved: list[location_pb2.DriverPosition],
    left: list[str],
) -> dict[str, Any]:
    return {
        "type": "viewer_delta",
        "appeared": [_viewer_driver(p) for p in appeared],
        "moved": [_viewer_driver(p) for p in moved],
        "left": left,
    }


def _viewer_driver(p: location_pb2.DriverPosition) -> dict[str, Any]:
    return convert.position_out(p).model_dump(mode="json")


# -- app -> edge ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bbox:
    """A map viewer's box, south-west corner to north-east corner."""

    min_lat: float
    min_lng: float
    max_lat: float
    max_lng: float

    def __contains__(self, p: location_pb2.DriverPosition) -> bool:
        return self.min_lat <= p.lat <= self.max_lat and self.min_lng <= p.lng <= self.max_lng


WORLD_BBOX = f"{-geo.MAX_LAT},-180,{geo.MAX_LAT},180"


def parse_bbox(text: object) -> Bbox:
    """``minLat,minLng,maxLat,maxLng``, checked; FrameError ``invalid_bbox`` otherwise."""
    if not isinstance(text, str) or len(text) > 200:
        raise FrameError("invalid_bbox", "bbox must be a string minLat,minLng,maxLat,maxLng")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise FrameError("invalid_bbox", "bbox must be four numbers minLat,minLng,maxLat,maxLng")
    box = Bbox(*values)
    if not (-geo.MAX_LAT <= box.min_lat <= box.max_lat <= geo.MAX_LAT):
        raise FrameError(
            "invalid_bbox", f"bbox latitudes must lie within +-{geo.MAX_LAT}, min <= max"
        )
    if not (-180.0 <= box.min_lng <= box.max_lng <= 180.0):
        raise FrameError("invalid_bbox", "bbox longitudes must lie within +-180, min <= max")
    return box


def parse_frame(text: str | bytes, *, max_bytes: int) -> dict[str, Any]:
    """The JSON object of one client message, with a string ``type``."""
    if len(text) > max_bytes:
        raise FrameError("too_large", f"message larger than {max_bytes} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise FrameError("bad_json", "message is not valid UTF-8") from None
    if _too_deep(text):
        raise FrameError("too_deep", f"message nested deeper than {MAX_DEPTH} levels")
    try:
        frame = _decode(text)
    except ValueError:
        raise FrameError("bad_json", "message is not valid JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("bad_message", 'message must be a JSON object with a string "type"')
    return frame


def _too_deep(text: str) -> bool:
    """True when arrays and objects nest deeper than MAX_DEPTH in ``text`` (read as JSON;
    brackets inside strings do not count). json.loads recurses once per level, so a frame
    of 4,000 ``[`` raised RecursionError inside it: the depth is checked first, without
    recursion, by regular expressions that each run once over the text (no backtracking)
    and one pass over the brackets left."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # the common case: no scan needed
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _number(frame: dict[str, Any], key: str, default: float | None) -> float:
    value = frame.get(key, default)
    if value is None:
        raise FrameError("invalid_position", f"{key} is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameError("invalid_position", f"{key} must be a finite number")
    try:
        number = float(value)  # an int beyond a double's range overflows
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise FrameError("invalid_position", f"{key} must be a finite number")
    return number


def parse_position(frame: dict[str, Any], *, now_ms: int) -> Position:
    """A driver's position message, checked by the rule the location service applies
    (:func:`rideshare.geo.check_position`)."""
    lat = _number(frame, "lat", None)
    lng = _number(frame, "lng", None)
    heading = _number(frame, "heading", 0.0)
    speed = _number(frame, "speed_mps", 0.0)
    accuracy = _number(frame, "accuracy_m", 0.0)
    ts = int(_number(frame, "ts_ms", float(now_ms)))
    problem = geo.check_position(lat, lng, heading, speed, accuracy, ts, now_ms=now_ms)
    if problem is not None:
        raise FrameError("invalid_position", problem[1])
    return Position(lat, lng, heading, speed, accuracy, ts)
