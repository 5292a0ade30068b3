"""Rider domain values <-> protobuf messages: the API's messages, rider.* payloads, trip.* reads.

No I/O. ``server`` turns requests into domain values and domain values into responses here;
``commands`` builds the rider.* event payloads here; ``events`` turns the trip.* payloads it
consumes into the read model's updates and ratings here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from protos import events as subjects
from protos.common.v1 import common_pb2
from protos.rider.v1 import events_pb2 as rider_events
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2
from rider import domain
from rider.billing import Payment, PaymentMethod
from rider.domain import (
    InvalidRiderError,
    NewRider,
    Rider,
    RiderChanges,
    RiderRating,
    TripPage,
    TripSummary,
    TripUpdate,
)
from rideshare import ids

__all__ = [
    "TRIP_UPDATE_SUBJECTS",
    "list_trips_response",
    "new_rider_from_proto",
    "payment_failed",
    "payment_method_to_proto",
    "payment_refunded",
    "payment_succeeded",
    "payment_to_proto",
    "rider_changes_from_proto",
    "rider_created",
    "rider_id_of",
    "rider_rating",
    "rider_to_proto",
    "rider_updated",
    "trip_to_proto",
    "trip_update",
    "trips_page_from_proto",
]

# The trip.* subjects whose payload trip_update folds into the history, in the trip's order.
TRIP_UPDATE_SUBJECTS = (
    subjects.TRIP_REQUESTED,
    subjects.TRIP_OFFERED,
    subjects.TRIP_ACCEPTED,
    subjects.TRIP_DRIVER_CANCELLED,
    subjects.TRIP_ARRIVED,
    subjects.TRIP_STARTED,
    subjects.TRIP_COMPLETED,
    subjects.TRIP_CANCELLED,
    subjects.TRIP_NO_DRIVERS,
)


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


# -- the API -----------------------------------------------------------------------------------


def rider_id_of(request: Any) -> str:
    """The request's rider id; InvalidRiderError when it is empty or not an id
    (rideshare.ids)."""
    try:
        return ids.check_id(request.rider_id, "rider_id")
    except ids.InvalidIdError as exc:
        raise InvalidRiderError(str(exc)) from None


def new_rider_from_proto(request: rider_pb2.CreateRiderRequest) -> NewRider:
    """The validated sign-up of a CreateRider request; InvalidRiderError names a bad field."""
    return domain.new_rider(
        name=request.name,
        phone=request.phone,
        email=request.email if request.HasField("email") else None,
        password=request.password,
    )


def rider_changes_from_proto(request: rider_pb2.UpdateRiderRequest) -> RiderChanges:
    """The validated changes of an UpdateRider request: an absent field is left alone."""
    return domain.rider_changes(
        name=request.name if request.HasField("name") else None,
        email=request.email if request.HasField("email") else None,
    )


def rider_to_proto(rider: Rider) -> rider_pb2.Rider:
    """The API's Rider."""
    return rider_pb2.Rider(
        id=rider.id,
        name=rider.name,
        phone=rider.phone,
        email=rider.email,
        rating_avg=rider.rating_avg,
        rating_count=rider.rating_count,
        created_at=_timestamp(rider.created_at),
        updated_at=_timestamp(rider.updated_at),
    )


def _latlng(point: tuple[float, float]) -> common_pb2.LatLng:
    return common_pb2.LatLng(lat=point[0], lng=point[1])


def trip_to_proto(trip: TripSummary) -> rider_pb2.TripSummary:
    """The API's TripSummary; state and class are the proto numbers the events carried."""
    message = rider_pb2.TripSummary(
        trip_id=trip.trip_id,
        state=trip_pb2.TripState.ValueType(trip.state),
        driver_id=trip.driver_id,
        vehicle_class=common_pb2.VehicleClass.ValueType(trip.vehicle_class),
    )
    if trip.pickup is not None:
        message.pickup.CopyFrom(_latlng(trip.pickup))
    if trip.dropoff is not None:
        message.dropoff.CopyFrom(_latlng(trip.dropoff))
    if trip.fare is not None:
        message.fare.CopyFrom(common_pb2.Money(amount_minor=trip.fare[0], currency=trip.fare[1]))
    if trip.requested_at is not None:
        message.requested_at.FromDatetime(trip.requested_at)
    if trip.completed_at is not None:
        message.completed_at.FromDatetime(trip.completed_at)
    if trip.ended_at is not None:
        message.ended_at.FromDatetime(trip.ended_at)
    return message


def trips_page_from_proto(request: rider_pb2.ListTripsRequest) -> TripPage:
    """The validated rider id and paging of a ListTrips request; InvalidRiderError for a bad
    id, size or token."""
    rider_id = rider_id_of(request)
    return domain.trips_page(rider_id, size=request.page_size, token=request.page_token)


def list_trips_response(
    rider_id: str, page: TripPage, trips: list[TripSummary]
) -> rider_pb2.ListTripsResponse:
    """One page of ``trips`` (fetched with ``page.limit + 1``) and the next page's token."""
    return rider_pb2.ListTripsResponse(
        trips=[trip_to_proto(t) for t in trips[: page.limit]],
        next_page_token=page.next_token(rider_id, trips),
    )


# -- rider.* payloads --------------------------------------------------------------------------


def rider_created(rider: Rider) -> rider_events.RiderCreated:
    """The rider.created payload for a new rider."""
    return rider_events.RiderCreated(
        rider_id=rider.id,
        name=rider.name,
        phone=rider.phone,
        email=rider.email,
        created_at=_timestamp(rider.created_at),
    )


def rider_updated(rider: Rider) -> rider_events.RiderUpdated:
    """The rider.updated payload: the full profile after the change."""
    return rider_events.RiderUpdated(
        rider_id=rider.id,
        name=rider.name,
        email=rider.email,
        updated_at=_timestamp(rider.updated_at),
    )


# -- trip.* -> read model ----------------------------------------------------------------------


def _when(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _point(point: common_pb2.LatLng, present: bool) -> tuple[float, float] | None:
    return (point.lat, point.lng) if present else None


class _Head(TypedDict):
    trip_id: str
    rider_id: str
    version: int
    state: int
    occurred_at: datetime


class _Places(TypedDict, total=False):
    pickup: tuple[float, float] | None
    dropoff: tuple[float, float] | None


def _head(message: Any, state: int, version: int, occurred_at: datetime) -> _Head:
    """The fields every TripUpdate has: whose trip, which version, what state, when."""
    return {
        "trip_id": message.trip_id,
        "rider_id": message.rider_id,
        "version": version,
        "state": state,
        "occurred_at": occurred_at,
    }


def _places(message: Any, *, dropoff: bool = True) -> _Places:
    """The payload's pickup (and dropoff), None where it has none."""
    places: _Places = {"pickup": _point(message.pickup, message.HasField("pickup"))}
    if dropoff:
        places["dropoff"] = _point(message.dropoff, message.HasField("dropoff"))
    return places


def trip_update(message: Message, *, version: int, occurred_at: datetime) -> TripUpdate | None:
    """What a trip.* payload says about its trip, or None for a payload the history does not
    fold (see TRIP_UPDATE_SUBJECTS). ``version`` and ``occurred_at`` come from the envelope."""
    match message:
        case trip_events.TripRequested() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_REQUESTED, version, occurred_at),
                **_places(m),
                fare_minor=m.fare.amount_minor if m.HasField("fare") else None,
                fare_currency=m.fare.currency if m.HasField("fare") else None,
                vehicle_class=m.vehicle_class,
                requested_at=_when(m.requested_at, m.HasField("requested_at")),
            )
        case trip_events.TripOffered() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_DISPATCHING, version, occurred_at),
                **_places(m),
                vehicle_class=m.vehicle_class,
            )
        case trip_events.TripAccepted() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_ACCEPTED, version, occurred_at),
                driver_id=m.driver_id,
                **_places(m, dropoff=False),
                vehicle_class=m.vehicle_class,
            )
        case trip_events.TripDriverCancelled() as m:
            # The trip goes back to dispatching without this driver.
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_DISPATCHING, version, occurred_at),
                driver_id="",
            )
        case trip_events.TripArrived() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_ARRIVED, version, occurred_at),
                driver_id=m.driver_id,
                **_places(m, dropoff=False),
            )
        case trip_events.TripStarted() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_IN_PROGRESS, version, occurred_at),
                driver_id=m.driver_id,
            )
        case trip_events.TripCompleted() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_COMPLETED, version, occurred_at),
                driver_id=m.driver_id,
                **_places(m),
                fare_minor=m.fare.amount_minor,
                fare_currency=m.fare.currency or None,
                vehicle_class=m.vehicle_class,
                requested_at=_when(m.requested_at, m.HasField("requested_at")),
                completed_at=_when(m.completed_at, m.HasField("completed_at")) or occurred_at,
            )
        case trip_events.TripCancelled() as m:
            has_fee = m.HasField("fee")
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_CANCELLED, version, occurred_at),
                **_places(m),
                # What a cancelled trip cost is its fee: nothing when none was charged.
                fare_minor=m.fee.amount_minor if has_fee else 0,
                fare_currency=(m.fee.currency or None) if has_fee else None,
                requested_at=_when(m.requested_at, m.HasField("requested_at")),
                ended_at=_when(m.cancelled_at, m.HasField("cancelled_at")) or occurred_at,
            )
        case trip_events.TripNoDrivers() as m:
            return TripUpdate(
                **_head(m, trip_pb2.TRIP_STATE_NO_DRIVERS, version, occurred_at),
                **_places(m),
                requested_at=_when(m.requested_at, m.HasField("requested_at")),
                ended_at=_when(m.ended_at, m.HasField("ended_at")) or occurred_at,
            )
    return None


def rider_rating(rated: trip_events.TripRated, *, rated_at: datetime) -> RiderRating | None:
    """A driver's rating of a rider from a trip.rated payload; None when a rider rated their
    driver (the driver service's business). The rating may still be invalid (see
    RiderRating.valid): the event is what the trip service recorded."""
    if rated.rater != trip_pb2.ACTOR_DRIVER:
        return None
    return RiderRating(
        trip_id=rated.trip_id, rider_id=rated.ratee_id, stars=rated.stars, rated_at=rated_at
    )


# -- payments ----------------------------------------------------------------------------------


def _money(amount_minor: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency=currency)


def payment_method_to_proto(method: PaymentMethod) -> rider_pb2.PaymentMethod:
    return rider_pb2.PaymentMethod(
        id=method.card.method_id,
        brand=method.card.brand,
        last4=method.card.last4,
        exp_month=method.card.exp_month,
        exp_year=method.card.exp_year,
        is_default=method.is_default,
        created_at=_timestamp(method.created_at),
    )


def payment_to_proto(payment: Payment) -> rider_pb2.Payment:
    return rider_pb2.Payment(
        id=payment.id,
        trip_id=payment.trip_id,
        rider_id=payment.rider_id,
        kind=int(payment.kind),  # type: ignore[arg-type]
        status=int(payment.status),  # type: ignore[arg-type]
        amount=_money(payment.amount_minor, payment.currency),
        card_last4=payment.card_last4,
        attempts=payment.attempts,
        failure=payment.failure,
        refunded=_money(payment.refunded_minor, payment.currency),
        refunds=[
            rider_pb2.Refund(
                id=r.id,
                amount=_money(r.amount_minor, payment.currency),
                reason=r.reason,
                pending=r.pending,
                created_at=_timestamp(r.created_at),
            )
            for r in payment.refunds
        ],
        created_at=_timestamp(payment.created_at),
        updated_at=_timestamp(payment.updated_at),
    )


def payment_succeeded(payment: Payment) -> rider_events.PaymentSucceeded:
    return rider_events.PaymentSucceeded(
        payment_id=payment.id,
        rider_id=payment.rider_id,
        trip_id=payment.trip_id,
        kind=int(payment.kind),  # type: ignore[arg-type]
        amount=_money(payment.amount_minor, payment.currency),
        card_last4=payment.card_last4,
        attempts=payment.attempts,
        charged_at=_timestamp(payment.updated_at),
    )


def payment_failed(payment: Payment) -> rider_events.PaymentFailed:
    return rider_events.PaymentFailed(
        payment_id=payment.id,
        rider_id=payment.rider_id,
        trip_id=payment.trip_id,
        kind=int(payment.kind),  # type: ignore[arg-type]
        amount=_money(payment.amount_minor, payment.currency),
        card_last4=payment.card_last4,
        attempts=payment.attempts,
        reason=payment.failure,
        failed_at=_timestamp(payment.updated_at),
    )


def payment_refunded(
    payment: Payment, *, refund_id: str, amount_minor: int
) -> rider_events.PaymentRefunded:
    return rider_events.PaymentRefunded(
        payment_id=payment.id,
        rider_id=payment.rider_id,
        trip_id=payment.trip_id,
        refund_id=refund_id,
        amount=_money(amount_minor, payment.currency),
        refunded_total=_money(payment.refunded_minor, payment.currency),
        refunded_at=_timestamp(payment.updated_at),
    )
