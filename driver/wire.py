"""Driver domain values <-> protobuf messages: the API's messages, driver.* payloads, trip.* reads.

No I/O. ``server`` turns requests into domain values and domain values into responses here;
``commands`` builds the driver.* event payloads here; ``events`` turns the trip.* payloads it
consumes into trip holds and ratings here.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from driver import domain
from driver.domain import (
    Driver,
    DriverRating,
    DriverStatus,
    InvalidDriverError,
    NewDriver,
    NewVehicle,
    OnlineDriver,
    OnlinePage,
    TripHold,
    Vehicle,
    VehicleClass,
)
from protos import events as subjects
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2
from protos.driver.v1 import events_pb2 as driver_events
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rideshare import ids

__all__ = [
    "TRIP_HOLD_SUBJECTS",
    "driver_created",
    "driver_id_of",
    "driver_offline",
    "driver_online",
    "driver_rating",
    "driver_to_proto",
    "new_driver_from_proto",
    "new_vehicle_from_proto",
    "online_driver_to_proto",
    "online_drivers_response",
    "online_page_from_proto",
    "status_to_proto",
    "trip_hold",
    "vehicle_added",
    "vehicle_class_to_proto",
    "vehicle_id_of",
    "vehicle_to_proto",
]

# trip.accepted puts the driver on the trip; the others free them again.
_RELEASES = (trip_events.TripCompleted, trip_events.TripCancelled, trip_events.TripDriverCancelled)
TRIP_HOLD_SUBJECTS = (
    subjects.TRIP_ACCEPTED,
    subjects.TRIP_COMPLETED,
    subjects.TRIP_CANCELLED,
    subjects.TRIP_DRIVER_CANCELLED,
)


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


# -- enums: the domain's IntEnums share the protos' numbers (a unit test keeps them in step) ---


def vehicle_class_to_proto(value: VehicleClass) -> common_pb2.VehicleClass.ValueType:
    return common_pb2.VehicleClass.ValueType(value)


def status_to_proto(value: DriverStatus) -> driver_pb2.DriverStatus.ValueType:
    return driver_pb2.DriverStatus.ValueType(value)


# -- the API -----------------------------------------------------------------------------------


def _id(value: str, field: str) -> str:
    try:
        return ids.check_id(value, field)
    except ids.InvalidIdError as exc:
        raise InvalidDriverError(str(exc)) from None


def driver_id_of(
    request: driver_pb2.AddVehicleRequest
    | driver_pb2.GetDriverRequest
    | driver_pb2.GoOnlineRequest
    | driver_pb2.GoOfflineRequest,
) -> str:
    """The request's driver id; InvalidDriverError when it is empty or not an id
    (rideshare.ids): it names a NATS subject and Redis keys further on."""
    return _id(request.driver_id, "driver_id")


def vehicle_id_of(request: driver_pb2.GoOnlineRequest) -> str:
    """The request's vehicle id; InvalidDriverError when it is empty or not an id."""
    return _id(request.vehicle_id, "vehicle_id")


def new_driver_from_proto(request: driver_pb2.CreateDriverRequest) -> NewDriver:
    """The validated sign-up of a CreateDriver request; InvalidDriverError names a bad field."""
    return domain.new_driver(
        name=request.name,
        phone=request.phone,
        password=request.password,
        license_number=request.license_number,
    )


def new_vehicle_from_proto(request: driver_pb2.AddVehicleRequest) -> NewVehicle:
    """The validated vehicle of an AddVehicle request; InvalidDriverError names a bad field."""
    return domain.new_vehicle(
        make=request.make,
        model=request.model,
        plate=request.plate,
        seats=request.seats,
        vehicle_class=request.vehicle_class,
    )


def vehicle_to_proto(vehicle: Vehicle) -> driver_pb2.Vehicle:
    """The API's Vehicle."""
    return driver_pb2.Vehicle(
        id=vehicle.id,
        driver_id=vehicle.driver_id,
        make=vehicle.make,
        model=vehicle.model,
        plate=vehicle.plate,
        seats=vehicle.seats,
        vehicle_class=vehicle_class_to_proto(vehicle.vehicle_class),
        created_at=_timestamp(vehicle.created_at),
    )


def driver_to_proto(driver: Driver) -> driver_pb2.Driver:
    """The API's Driver, with their vehicles."""
    return driver_pb2.Driver(
        id=driver.id,
        name=driver.name,
        phone=driver.phone,
        license_number=driver.license_number,
        status=status_to_proto(driver.status),
        active_vehicle_id=driver.active_vehicle_id,
        current_trip_id=driver.current_trip_id,
        vehicles=[vehicle_to_proto(v) for v in driver.vehicles],
        rating_avg=driver.rating_avg,
        rating_count=driver.rating_count,
        created_at=_timestamp(driver.created_at),
    )


def online_driver_to_proto(driver: OnlineDriver) -> driver_pb2.OnlineDriver:
    """One entry of ListOnlineDrivers."""
    return driver_pb2.OnlineDriver(
        driver_id=driver.driver_id, vehicle_class=vehicle_class_to_proto(driver.vehicle_class)
    )


def online_page_from_proto(request: driver_pb2.ListOnlineDriversRequest) -> OnlinePage:
    """The validated paging of a ListOnlineDrivers request; InvalidDriverError for a bad size
    or token."""
    return domain.online_page(size=request.page_size, token=request.page_token)


def online_drivers_response(
    page: OnlinePage, drivers: list[OnlineDriver]
) -> driver_pb2.ListOnlineDriversResponse:
    """One page of ``drivers`` (fetched with ``page.limit + 1``) and the next page's token."""
    return driver_pb2.ListOnlineDriversResponse(
        drivers=[online_driver_to_proto(d) for d in drivers[: page.limit]],
        next_page_token=page.next_token(drivers),
    )


# -- driver.* payloads -------------------------------------------------------------------------


def driver_created(driver: Driver) -> driver_events.DriverCreated:
    """The driver.created payload."""
    return driver_events.DriverCreated(
        driver_id=driver.id,
        name=driver.name,
        phone=driver.phone,
        created_at=_timestamp(driver.created_at),
    )


def vehicle_added(vehicle: Vehicle) -> driver_events.VehicleAdded:
    """The driver.vehicle_added payload."""
    return driver_events.VehicleAdded(
        driver_id=vehicle.driver_id,
        vehicle_id=vehicle.id,
        make=vehicle.make,
        model=vehicle.model,
        plate=vehicle.plate,
        seats=vehicle.seats,
        vehicle_class=vehicle_class_to_proto(vehicle.vehicle_class),
    )


def driver_online(driver: Driver, vehicle: Vehicle) -> driver_events.DriverWentOnline:
    """The driver.online payload: who, and the car a rider is told about."""
    return driver_events.DriverWentOnline(
        driver_id=driver.id,
        vehicle_id=vehicle.id,
        vehicle_class=vehicle_class_to_proto(vehicle.vehicle_class),
        driver_name=driver.name,
        vehicle_make=vehicle.make,
        vehicle_model=vehicle.model,
        vehicle_plate=vehicle.plate,
    )


def driver_offline(driver_id: str) -> driver_events.DriverWentOffline:
    """The driver.offline payload."""
    return driver_events.DriverWentOffline(driver_id=driver_id)


# -- trip.* -> drivers -------------------------------------------------------------------------


def trip_hold(message: Message, *, version: int) -> TripHold | None:
    """Whether a trip.* payload puts its driver on the trip or frees them, at the trip's
    ``version`` (the envelope's); None for other payloads and for a trip without a driver
    (e.g. cancelled before any driver was involved)."""
    if isinstance(message, trip_events.TripAccepted):
        live = True
    elif isinstance(message, _RELEASES):
        live = False
    else:
        return None
    if not message.driver_id or not message.trip_id:
        return None
    return TripHold(
        driver_id=message.driver_id, trip_id=message.trip_id, trip_version=version, live=live
    )


def driver_rating(rated: trip_events.TripRated, *, rated_at: datetime) -> DriverRating | None:
    """A rider's rating of a driver from a trip.rated payload; None when a driver rated their
    rider (the rider service's business). The rating may still be invalid (see
    DriverRating.valid): the event is what the trip service recorded."""
    if rated.rater != trip_pb2.ACTOR_RIDER:
        return None
    return DriverRating(
        trip_id=rated.trip_id, driver_id=rated.ratee_id, stars=rated.stars, rated_at=rated_at
    )
