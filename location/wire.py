"""Domain values <-> protobuf messages for the location service: its API, the live feed's
messages, and the event payloads and replies of other services it reads.

No I/O; used by ``server`` (requests and responses), ``feed`` (live positions), ``events``
(driver and trip events) and ``rebuild`` (the driver and trip services' pages).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from location import domain
from location.domain import (
    Availability,
    InvalidArgumentError,
    NearbyHit,
    Position,
    Reject,
    Search,
    TrackDistance,
)
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2
from protos.location.v1 import location_pb2
from protos.trip.v1 import trip_pb2

__all__ = [
    "area_response",
    "availability_to_proto",
    "check_update",
    "driver_id_of",
    "excluded_of",
    "held_driver",
    "hold_of",
    "holds_of",
    "nearest_response",
    "online_drivers_of",
    "position_tail",
    "position_to_proto",
    "positions_from_updates",
    "reject_to_proto",
    "report_result",
    "search_of",
    "trip_distance_to_proto",
    "vehicle_class_filter",
    "vehicle_class_from_proto",
    "vehicle_class_to_proto",
]

_AVAILABILITY: Final[Mapping[Availability, location_pb2.Availability.ValueType]] = {
    Availability.AVAILABLE: location_pb2.AVAILABILITY_AVAILABLE,
    Availability.OFFERED: location_pb2.AVAILABILITY_OFFERED,
    Availability.ON_TRIP: location_pb2.AVAILABILITY_ON_TRIP,
    Availability.OFFLINE: location_pb2.AVAILABILITY_OFFLINE,
}

_REJECT: Final[Mapping[Reject, location_pb2.RejectReason.ValueType]] = {
    Reject.MISSING_DRIVER_ID: location_pb2.REJECT_REASON_MISSING_DRIVER_ID,
    Reject.INVALID_COORDINATES: location_pb2.REJECT_REASON_INVALID_COORDINATES,
    Reject.INVALID_HEADING: location_pb2.REJECT_REASON_INVALID_HEADING,
    Reject.INVALID_MOTION: location_pb2.REJECT_REASON_INVALID_MOTION,
    Reject.INVALID_TIMESTAMP: location_pb2.REJECT_REASON_INVALID_TIMESTAMP,
    Reject.OUT_OF_ORDER: location_pb2.REJECT_REASON_OUT_OF_ORDER,
}


# The classes a search may name: every number the enum has, but UNSPECIFIED.
_VEHICLE_CLASSES: Final = frozenset(common_pb2.VehicleClass.values()) - {
    common_pb2.VEHICLE_CLASS_UNSPECIFIED
}


def availability_to_proto(value: Availability) -> location_pb2.Availability.ValueType:
    return _AVAILABILITY[value]


def reject_to_proto(value: Reject) -> location_pb2.RejectReason.ValueType:
    return _REJECT[value]


def vehicle_class_to_proto(value: int) -> common_pb2.VehicleClass.ValueType:
    """The index keeps vehicle classes as the wire enum's numbers (0: not known), and an
    open proto3 enum carries any number, so this is the number itself, typed."""
    return common_pb2.VehicleClass.ValueType(value)


def vehicle_class_from_proto(value: common_pb2.VehicleClass.ValueType) -> int:
    return int(value)


def vehicle_class_filter(request: location_pb2.NearestDriversRequest) -> int | None:
    """The one vehicle class a search asks for, or None for any; InvalidArgumentError for
    UNSPECIFIED or a number the enum does not name (an open enum carries any)."""
    if not request.HasField("vehicle_class"):
        return None
    value = request.vehicle_class
    if (
        value == common_pb2.VEHICLE_CLASS_UNSPECIFIED
        or value not in common_pb2.VehicleClass.values()
    ):
        raise InvalidArgumentError(f"vehicle_class {value} is not a vehicle class")
    return vehicle_class_from_proto(value)


def driver_id_of(
    request: location_pb2.GetPositionRequest | location_pb2.WatchDriverRequest,
) -> str:
    """The request's driver id; InvalidArgumentError when it is empty or not an id."""
    return domain.check_id(request.driver_id, "driver_id")


def excluded_of(request: location_pb2.NearestDriversRequest) -> list[str]:
    """The drivers a search leaves out; InvalidArgumentError for one that is not an id."""
    return [domain.check_id(d, "exclude_driver_ids") for d in request.exclude_driver_ids]


def search_of(request: location_pb2.NearestDriversRequest) -> Search:
    """The search a NearestDrivers request asks for (alone, or as one of a batch's), radius
    capped and limit defaulted; InvalidArgumentError for a malformed one."""
    radius = domain.check_search(request.lat, request.lng, request.radius_m)
    limit = domain.clamp_limit(
        request.limit, default=domain.DEFAULT_SEARCH_LIMIT, maximum=domain.MAX_SEARCH_LIMIT
    )
    return Search(
        request.lat,
        request.lng,
        radius,
        limit,
        vehicle_class_filter(request),
        tuple(excluded_of(request)),
    )


def hold_of(
    request: location_pb2.ReserveDriverRequest | location_pb2.ReleaseDriverRequest,
) -> tuple[str, str]:
    """(driver id, trip id) of a hold a request takes or ends; InvalidArgumentError unless it
    names both."""
    return domain.check_hold(request.driver_id, request.trip_id)


# -- positions --------------------------------------------------------------------------------


def check_update(
    update: location_pb2.PositionUpdate, *, now_ms: int, max_future_ms: int
) -> tuple[Reject, str] | None:
    """:func:`location.domain.check_position` of a wire update."""
    return domain.check_position(
        update.driver_id,
        update.lat,
        update.lng,
        update.heading,
        update.speed_mps,
        update.accuracy_m,
        update.client_ts_ms,
        now_ms=now_ms,
        max_future_ms=max_future_ms,
    )


def positions_from_updates(
    updates: Iterable[location_pb2.PositionUpdate], *, server_ts_ms: int
) -> list[Position]:
    """The positions to store for well-formed updates received at ``server_ts_ms``."""
    return [
        Position(
            u.driver_id,
            u.lat,
            u.lng,
            u.heading,
            u.speed_mps,
            u.accuracy_m,
            u.client_ts_ms,
            server_ts_ms,
        )
        for u in updates
    ]


def position_to_proto(position: Position) -> location_pb2.DriverPosition:
    return location_pb2.DriverPosition(
        driver_id=position.driver_id,
        lat=position.lat,
        lng=position.lng,
        heading=position.heading,
        speed_mps=position.speed_mps,
        accuracy_m=position.accuracy_m,
        client_ts_ms=position.client_ts_ms,
        server_ts_ms=position.server_ts_ms,
        availability=availability_to_proto(position.availability),
        vehicle_class=vehicle_class_to_proto(position.vehicle_class),
    )


def position_tail(*, server_ts_ms: int, availability: Availability) -> bytes:
    """The bytes that turn a ``PositionUpdate``'s own bytes into a ``DriverPosition``.

    DriverPosition repeats PositionUpdate's fields 1-7 with the same numbers and types, and
    protobuf parses concatenated messages as one merged message, so ``update bytes + tail``
    is a valid DriverPosition without building one (the live feed does this for every update
    the service takes; a unit test pins the field numbers that make it valid).
    """
    return location_pb2.DriverPosition(
        server_ts_ms=server_ts_ms, availability=availability_to_proto(availability)
    ).SerializeToString()


def report_result(*, applied: bool, server_ts_ms: int) -> location_pb2.ReportResult:
    """ReportPosition's answer for a well-formed update: applied, or dropped as older than
    the stored position."""
    return location_pb2.ReportResult(
        accepted=applied,
        reason=(
            location_pb2.REJECT_REASON_UNSPECIFIED
            if applied
            else reject_to_proto(Reject.OUT_OF_ORDER)
        ),
        server_ts_ms=server_ts_ms,
    )


def nearest_response(
    hits: Iterable[NearbyHit], *, now_ms: int
) -> location_pb2.NearestDriversResponse:
    response = location_pb2.NearestDriversResponse()
    for hit in hits:
        p = hit.position
        driver = response.drivers.add(
            driver_id=p.driver_id,
            distance_m=hit.distance_m,
            position_age_ms=max(0, now_ms - p.server_ts_ms),
            heading=p.heading,
            vehicle_class=vehicle_class_to_proto(p.vehicle_class),
        )
        driver.position.lat = p.lat
        driver.position.lng = p.lng
    return response


def area_response(
    positions: Iterable[Position], *, truncated: bool
) -> location_pb2.DriversInAreaResponse:
    return location_pb2.DriversInAreaResponse(
        drivers=[position_to_proto(p) for p in positions], truncated=truncated
    )


def trip_distance_to_proto(measured: TrackDistance) -> location_pb2.TripDistance:
    return location_pb2.TripDistance(
        distance_m=measured.distance_m,
        points_used=measured.points_used,
        points_ignored=measured.points_ignored,
        first_ts_ms=measured.first_ts_ms,
        last_ts_ms=measured.last_ts_ms,
    )


# -- what other services say --------------------------------------------------------------------


def held_driver(payload: object) -> tuple[str, str] | None:
    """(driver id, trip id) of a trip event that ends a hold on a driver, or None when the
    event names no driver or no trip (a trip that never had one)."""
    driver_id = str(getattr(payload, "driver_id", ""))
    trip_id = str(getattr(payload, "trip_id", ""))
    if not driver_id or not trip_id:
        return None
    return driver_id, trip_id


def online_drivers_of(reply: driver_pb2.ListOnlineDriversResponse) -> list[tuple[str, int]]:
    """(driver id, vehicle class) of each online driver on one page."""
    return [(d.driver_id, vehicle_class_from_proto(d.vehicle_class)) for d in reply.drivers]


def holds_of(reply: trip_pb2.ListActiveAssignmentsResponse) -> list[tuple[str, str, bool]]:
    """(driver id, trip id, offered rather than assigned) of each hold on one page."""
    return [
        (a.driver_id, a.trip_id, a.kind == trip_pb2.ASSIGNMENT_KIND_OFFERED)
        for a in reply.assignments
    ]
