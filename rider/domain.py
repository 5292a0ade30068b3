"""The rider service's rules: account validation, the trip-history read model, ratings. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rideshare.credentials import (
    InvalidCredentialError,
    check_email,
    check_password,
    check_phone,
    check_text,
)
from rideshare.paging import InvalidPageError, decode_page_token, encode_page_token, page_size

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "BadCredentialsError",
    "InvalidRiderError",
    "NewRider",
    "PhoneTakenError",
    "Rider",
    "RiderChanges",
    "RiderError",
    "RiderNotFoundError",
    "RiderRating",
    "TripPage",
    "TripSummary",
    "TripUpdate",
    "new_rider",
    "rider_changes",
    "trips_page",
]

MAX_NAME_LEN = 100
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class RiderError(Exception):
    """Base of every error the rider service reports to its callers."""


class InvalidRiderError(RiderError):
    """Malformed input: a bad name, phone, email, password, page size or page token."""


class RiderNotFoundError(RiderError):
    """No rider has this id."""


class PhoneTakenError(RiderError):
    """Another rider signed up with this phone number."""


class BadCredentialsError(RiderError):
    """Unknown phone or wrong password; deliberately the same error for both."""


@dataclass(frozen=True)
class NewRider:
    """A validated sign-up, password still in plain text (the caller hashes it)."""

    name: str
    phone: str
    email: str
    password: str


@dataclass(frozen=True)
class Rider:
    """A rider account as stored; never holds the password or its hash."""

    id: str
    name: str
    phone: str
    email: str
    rating_avg: float
    rating_count: int
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RiderChanges:
    """The fields an UpdateRider sets; None leaves a field alone, email "" removes it."""

    name: str | None = None
    email: str | None = None

    def changes(self, rider: Rider) -> bool:
        """Whether applying these changes to ``rider`` would change anything."""
        return (self.name is not None and self.name != rider.name) or (
            self.email is not None and self.email != rider.email
        )


def new_rider(*, name: str, phone: str, email: str | None, password: str) -> NewRider:
    """Validate a sign-up; InvalidRiderError names the first bad field."""
    try:
        return NewRider(
            name=check_text(name, field="name", max_len=MAX_NAME_LEN),
            phone=check_phone(phone),
            email=check_email(email) if email else "",
            password=check_password(password),
        )
    except InvalidCredentialError as exc:
        raise InvalidRiderError(str(exc)) from None


def rider_changes(*, name: str | None, email: str | None) -> RiderChanges:
    """Validate an update; a present empty email means "remove the email"."""
    try:
        return RiderChanges(
            name=None if name is None else check_text(name, field="name", max_len=MAX_NAME_LEN),
            email=None if email is None else (check_email(email) if email.strip() else ""),
        )
    except InvalidCredentialError as exc:
        raise InvalidRiderError(str(exc)) from None


@dataclass(frozen=True)
class RiderRating:
    """A driver's rating of a rider after a trip, as the trip service recorded it."""

    trip_id: str
    rider_id: str
    stars: int
    rated_at: datetime

    @property
    def valid(self) -> bool:
        """1 to 5 stars for a named rider; anything else is ignored, never counted."""
        return 1 <= self.stars <= 5 and bool(self.rider_id)


# -- trip history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TripUpdate:
    """What one trip.* event says about a trip, for the read model.

    ``version`` is the trip's aggregate version after the event. State-like fields (state,
    driver_id, fare, completed_at, ended_at) are taken from the newest version seen; facts that
    never change (rider, places, class, request time) fill gaps whatever the version, so
    events arriving out of order still build the full row. None means "this event does not
    say"; driver_id "" means "no driver any more".
    """

    trip_id: str
    rider_id: str
    version: int
    state: int
    occurred_at: datetime
    driver_id: str | None = None
    pickup: tuple[float, float] | None = None
    dropoff: tuple[float, float] | None = None
    fare_minor: int | None = None
    fare_currency: str | None = None  # None with a fare_minor: keep the currency known so far
    vehicle_class: int | None = None
    requested_at: datetime | None = None
    completed_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class TripSummary:
    """One trip of a rider's history, as stored in the read model."""

    trip_id: str
    state: int
    pickup: tuple[float, float] | None
    dropoff: tuple[float, float] | None
    fare: tuple[int, str] | None
    driver_id: str
    vehicle_class: int
    requested_at: datetime | None
    completed_at: datetime | None
    ended_at: datetime | None
    sort_at: datetime


@dataclass(frozen=True)
class TripPage:
    """Where a ListTrips page starts and how long it is."""

    limit: int
    after: tuple[datetime, str] | None  # (sort_at, trip_id) of the previous page's last trip

    def next_token(self, rider_id: str, trips: list[TripSummary]) -> str:
        """The token of the page after ``trips`` (fetched with limit + 1), or ""."""
        if len(trips) <= self.limit:
            return ""
        last = trips[self.limit - 1]
        return encode_page_token(_trips_scope(rider_id), [last.sort_at, last.trip_id])


def _trips_scope(rider_id: str) -> str:
    return f"rider.trips:{rider_id}"


def trips_page(rider_id: str, *, size: int, token: str) -> TripPage:
    """Validate ListTrips paging; InvalidRiderError for a negative size or a bad token."""
    try:
        limit = page_size(size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        if not token:
            return TripPage(limit=limit, after=None)
        sort_at, trip_id = decode_page_token(
            token, _trips_scope(rider_id), key_types=(datetime, str)
        )
        assert isinstance(sort_at, datetime)
        return TripPage(limit=limit, after=(sort_at, str(trip_id)))
    except InvalidPageError as exc:
        raise InvalidRiderError(str(exc)) from None
