"""The driver service's rules: accounts, vehicles, going online and offline, status. Pure."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from rideshare.credentials import InvalidCredentialError, check_password, check_phone, check_text
from rideshare.paging import InvalidPageError, decode_page_token, encode_page_token, page_size

__all__ = [
    "BadCredentialsError",
    "Driver",
    "DriverError",
    "DriverNotFoundError",
    "DriverRating",
    "DriverStatus",
    "InvalidDriverError",
    "NewDriver",
    "NewVehicle",
    "NoVehicleError",
    "OnTripError",
    "OnlineDriver",
    "OnlinePage",
    "PhoneTakenError",
    "PlateTakenError",
    "TripHold",
    "Vehicle",
    "VehicleClass",
    "VehicleNotOwnedError",
    "new_driver",
    "new_vehicle",
    "normalize_plate",
    "online_page",
]

MAX_NAME_LEN = 100
MAX_LICENSE_LEN = 50
MAX_MAKE_LEN = 50
MIN_SEATS, MAX_SEATS = 1, 8
DEFAULT_ONLINE_PAGE_SIZE = 500
MAX_ONLINE_PAGE_SIZE = 5_000
_ONLINE_SCOPE = "driver.online"
_PLATE_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,14}")


class VehicleClass(enum.IntEnum):
    """rideshare.common.v1.VehicleClass, by number (a unit test keeps the two in step)."""

    STANDARD = 1
    XL = 2
    COMFORT = 3


class DriverStatus(enum.IntEnum):
    """rideshare.driver.v1.DriverStatus, by number (a unit test keeps the two in step)."""

    OFFLINE = 1
    AVAILABLE = 2
    ON_TRIP = 3


class DriverError(Exception):
    """Base of every error the driver service reports to its callers."""


class InvalidDriverError(DriverError):
    """Malformed input: a bad name, phone, password, license, make, model, plate, seats, class."""


class DriverNotFoundError(DriverError):
    """No driver has this id."""


class PhoneTakenError(DriverError):
    """Another driver signed up with this phone number."""


class PlateTakenError(DriverError):
    """A vehicle with this plate is registered already."""


class BadCredentialsError(DriverError):
    """Unknown phone or wrong password; deliberately the same error for both."""


class NoVehicleError(DriverError):
    """The driver has no vehicle, so cannot go online."""


class VehicleNotOwnedError(DriverError):
    """The vehicle does not exist or belongs to another driver."""


class OnTripError(DriverError):
    """The driver holds a live trip; going online or offline must wait until it ends."""


@dataclass(frozen=True)
class NewDriver:
    """A validated sign-up, password still in plain text (the caller hashes it)."""

    name: str
    phone: str
    password: str
    license_number: str


@dataclass(frozen=True)
class NewVehicle:
    """A validated vehicle registration."""

    make: str
    model: str
    plate: str
    seats: int
    vehicle_class: VehicleClass


@dataclass(frozen=True)
class Vehicle:
    """A registered vehicle."""

    id: str
    driver_id: str
    make: str
    model: str
    plate: str
    seats: int
    vehicle_class: VehicleClass
    created_at: datetime


@dataclass(frozen=True)
class Driver:
    """A driver account as stored, with its vehicles (oldest first); never the password."""

    id: str
    name: str
    phone: str
    license_number: str
    online: bool
    active_vehicle_id: str
    current_trip_id: str
    rating_avg: float
    rating_count: int
    version: int
    created_at: datetime
    vehicles: tuple[Vehicle, ...] = field(default=())

    @property
    def status(self) -> DriverStatus:
        """ON_TRIP while a trip holds the driver (even one who went offline meanwhile),
        else AVAILABLE when online, else OFFLINE."""
        if self.current_trip_id:
            return DriverStatus.ON_TRIP
        return DriverStatus.AVAILABLE if self.online else DriverStatus.OFFLINE

    def vehicle_to_go_online(self, vehicle_id: str) -> Vehicle | None:
        """The vehicle to go online with, or None when already online with it (a no-op).

        OnTripError during a trip, NoVehicleError without any vehicle, VehicleNotOwnedError
        for a vehicle that is not the driver's.
        """
        if self.status is DriverStatus.ON_TRIP:
            raise OnTripError("the driver is on a trip")
        if not self.vehicles:
            raise NoVehicleError("the driver has no vehicle: add one before going online")
        for vehicle in self.vehicles:
            if vehicle.id == vehicle_id:
                if self.online and self.active_vehicle_id == vehicle_id:
                    return None
                return vehicle
        raise VehicleNotOwnedError(f"vehicle {vehicle_id!r} is not one of the driver's")

    def must_go_offline(self) -> bool:
        """Whether going offline changes anything; OnTripError during a trip."""
        if self.status is DriverStatus.ON_TRIP:
            raise OnTripError("the driver is on a trip: finish or cancel it first")
        return self.online


def _invalid(exc: InvalidCredentialError) -> InvalidDriverError:
    return InvalidDriverError(str(exc))


def new_driver(*, name: str, phone: str, password: str, license_number: str) -> NewDriver:
    """Validate a sign-up; InvalidDriverError names the first bad field."""
    try:
        return NewDriver(
            name=check_text(name, field="name", max_len=MAX_NAME_LEN),
            phone=check_phone(phone),
            password=check_password(password, phone=phone),
            license_number=check_text(
                license_number, field="license_number", max_len=MAX_LICENSE_LEN
            ),
        )
    except InvalidCredentialError as exc:
        raise _invalid(exc) from None


def normalize_plate(plate: str) -> str:
    """Upper case without spaces; InvalidDriverError unless 1-15 letters, digits or dashes."""
    normalized = "".join(plate.split()).upper()
    if not _PLATE_RE.fullmatch(normalized):
        raise InvalidDriverError("plate must be 1-15 letters, digits or dashes")
    return normalized


def new_vehicle(*, make: str, model: str, plate: str, seats: int, vehicle_class: int) -> NewVehicle:
    """Validate a vehicle registration; InvalidDriverError names the first bad field."""
    try:
        make = check_text(make, field="make", max_len=MAX_MAKE_LEN)
        model = check_text(model, field="model", max_len=MAX_MAKE_LEN)
    except InvalidCredentialError as exc:
        raise _invalid(exc) from None
    if not MIN_SEATS <= seats <= MAX_SEATS:
        raise InvalidDriverError(f"seats must be {MIN_SEATS}-{MAX_SEATS}, got {seats}")
    try:
        klass = VehicleClass(vehicle_class)
    except ValueError:
        raise InvalidDriverError("vehicle_class must be STANDARD, XL or COMFORT") from None
    return NewVehicle(
        make=make,
        model=model,
        plate=normalize_plate(plate),
        seats=seats,
        vehicle_class=klass,
    )


@dataclass(frozen=True, slots=True)
class OnlineDriver:
    """An online driver and the class of the vehicle they are online with."""

    driver_id: str
    vehicle_class: VehicleClass


@dataclass(frozen=True, slots=True)
class OnlinePage:
    """Where a ListOnlineDrivers page starts (after this driver id) and how long it is."""

    limit: int
    after: str | None

    def next_token(self, drivers: list[OnlineDriver]) -> str:
        """The token of the page after ``drivers`` (fetched with limit + 1), or ""."""
        if len(drivers) <= self.limit:
            return ""
        return encode_page_token(_ONLINE_SCOPE, [drivers[self.limit - 1].driver_id])


def online_page(*, size: int, token: str) -> OnlinePage:
    """Validate ListOnlineDrivers paging; InvalidDriverError for a negative size or bad token."""
    try:
        limit = page_size(size, default=DEFAULT_ONLINE_PAGE_SIZE, maximum=MAX_ONLINE_PAGE_SIZE)
        if not token:
            return OnlinePage(limit=limit, after=None)
        (after,) = decode_page_token(token, _ONLINE_SCOPE, key_types=(str,))
        return OnlinePage(limit=limit, after=str(after))
    except InvalidPageError as exc:
        raise InvalidDriverError(str(exc)) from None


# -- what trip.* events say about drivers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TripHold:
    """A trip taking the driver (``live``: accepted) or letting them go (completed, cancelled,
    or the driver cancelled), at the trip's ``trip_version``."""

    driver_id: str
    trip_id: str
    trip_version: int
    live: bool


@dataclass(frozen=True, slots=True)
class DriverRating:
    """A rider's rating of a driver after a trip, as the trip service recorded it."""

    trip_id: str
    driver_id: str
    stars: int
    rated_at: datetime

    @property
    def valid(self) -> bool:
        """1 to 5 stars for a named driver; anything else is ignored, never counted."""
        return 1 <= self.stars <= 5 and bool(self.driver_id)
