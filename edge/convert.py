"""Protobuf messages <-> the JSON models of edge/models.py. Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from edge import models
from protos.common.v1 import common_pb2
from protos.driver.v1 import driver_pb2
from protos.location.v1 import location_pb2
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import trip_pb2

__all__ = [
    "VEHICLE_CLASSES",
    "driver_out",
    "latlng",
    "merge_fresh",
    "notification_out",
    "position_out",
    "quote_out",
    "rider_out",
    "settlement_out",
    "state_name",
    "trip_out",
    "trip_summary_of_trip",
    "trip_summary_out",
    "vehicle_class_name",
]

VEHICLE_CLASSES: dict[models.VehicleClassName, common_pb2.VehicleClass.ValueType] = {
    "standard": common_pb2.VEHICLE_CLASS_STANDARD,
    "xl": common_pb2.VEHICLE_CLASS_XL,
    "comfort": common_pb2.VEHICLE_CLASS_COMFORT,
}
_CLASS_NAMES: dict[int, models.VehicleClassName] = {int(v): k for k, v in VEHICLE_CLASSES.items()}


def _names(enum: Any, prefix: str, names: Any) -> dict[int, Any]:
    """Proto enum value -> the API's lowercase name (the enum's name less ``prefix``), every
    name one of the ``Literal`` ``names`` the API model declares (checked here, at import,
    so an enum value added to a proto cannot reach a response the model would refuse)."""
    table = {
        value: name.removeprefix(prefix).lower()
        for name, value in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }
    unknown = set(table.values()) - set(get_args(names))
    if unknown:
        raise RuntimeError(f"{enum.DESCRIPTOR.name} names {sorted(unknown)} are not in the API")
    return table


_STATE_NAMES: dict[int, models.TripStateName] = _names(
    trip_pb2.TripState, "TRIP_STATE_", models.TripStateName
)
TRIP_STATES: dict[str, int] = {name: value for value, name in _STATE_NAMES.items()}
_ACTOR_NAMES: dict[int, models.ActorName] = _names(trip_pb2.Actor, "ACTOR_", models.ActorName)
_CHARGE_BASIS_NAMES: dict[int, models.ChargeBasisName] = _names(
    trip_pb2.ChargeBasis, "CHARGE_BASIS_", models.ChargeBasisName
)
_FARE_RULE_NAMES: dict[int, models.FareRuleName] = _names(
    trip_pb2.FareRule, "FARE_RULE_", models.FareRuleName
)
_MEASURE_SOURCE_NAMES: dict[int, models.MeasureSourceName] = _names(
    trip_pb2.MeasureSource, "MEASURE_SOURCE_", models.MeasureSourceName
)
_AVAILABILITY_NAMES: dict[int, models.AvailabilityName] = _names(
    location_pb2.Availability, "AVAILABILITY_", models.AvailabilityName
)
_DRIVER_STATUS: dict[int, models.DriverStatusName] = _names(
    driver_pb2.DriverStatus, "DRIVER_STATUS_", models.DriverStatusName
)
_REJECT_NAMES: dict[int, str] = {
    value: name.removeprefix("REJECT_REASON_").lower()
    for name, value in location_pb2.RejectReason.items()
}
LIVE_STATES = ("requested", "dispatching", "accepted", "arrived", "in_progress")
TERMINAL_STATES = frozenset({"completed", "cancelled", "no_drivers"})


def state_name(value: int) -> Any:
    return _STATE_NAMES.get(value)


def vehicle_class_name(value: int) -> Any:
    """The API's name of a proto VehicleClass; None for UNSPECIFIED or an unknown value."""
    return _CLASS_NAMES.get(value)


def _ts(msg: Message, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    ts: Timestamp = getattr(msg, field)
    return ts.ToDatetime(tzinfo=UTC)


def _money(msg: Message, field: str) -> models.Money | None:
    if not msg.HasField(field):
        return None
    m: common_pb2.Money = getattr(msg, field)
    return models.Money(amount_minor=m.amount_minor, currency=m.currency)


def _opt(value: str) -> str | None:
    return value or None


def latlng(point: common_pb2.LatLng) -> models.LatLng:
    return models.LatLng.model_construct(lat=point.lat, lng=point.lng)


def to_latlng(point: models.LatLng) -> common_pb2.LatLng:
    return common_pb2.LatLng(lat=point.lat, lng=point.lng)


def rider_out(r: rider_pb2.Rider) -> models.RiderOut:
    return models.RiderOut(
        id=r.id,
        name=r.name,
        phone=r.phone,
        email=_opt(r.email),
        rating_avg=r.rating_avg,
        rating_count=r.rating_count,
        created_at=_ts(r, "created_at"),
    )


def driver_out(d: driver_pb2.Driver) -> models.DriverOut:
    return models.DriverOut(
        id=d.id,
        name=d.name,
        phone=d.phone,
        license_number=d.license_number,
        status=_DRIVER_STATUS.get(d.status, "unknown"),
        active_vehicle_id=_opt(d.active_vehicle_id),
        current_trip_id=_opt(d.current_trip_id),
        vehicles=[
            models.VehicleOut(
                id=v.id,
                make=v.make,
                model=v.model,
                plate=v.plate,
                seats=v.seats,
                vehicle_class=_CLASS_NAMES.get(v.vehicle_class),
            )
            for v in d.vehicles
        ],
        rating_avg=d.rating_avg,
        rating_count=d.rating_count,
        created_at=_ts(d, "created_at"),
    )


def quote_out(q: trip_pb2.Quote) -> models.QuoteOut:
    return models.QuoteOut(
        quote_id=q.quote_id,
        pickup=latlng(q.pickup),
        dropoff=latlng(q.dropoff),
        vehicle_class=_CLASS_NAMES.get(q.vehicle_class),
        price=models.Money(amount_minor=q.price.amount_minor, currency=q.price.currency),
        surge_multiplier=q.surge_multiplier,
        distance_m=q.distance_m,
        duration_s=q.duration_s,
        created_at=_ts(q, "created_at"),
        expires_at=_ts(q, "expires_at"),
    )


def settlement_out(f: trip_pb2.FareSettlement) -> models.FareSettlementOut:
    """A trip's fare settlement as the API shows it."""

    return models.FareSettlementOut(
        rule=_FARE_RULE_NAMES.get(f.rule),
        flagged_for_review=f.flagged_for_review,
        quoted_fare=_money(f, "quoted_fare"),
        quoted_distance_m=f.quoted_distance_m,
        quoted_duration_s=f.quoted_duration_s,
        measured_distance_m=(f.measured_distance_m if f.HasField("measured_distance_m") else None),
        distance_source=_MEASURE_SOURCE_NAMES.get(f.distance_source),
        measured_duration_s=f.measured_duration_s,
        duration_source=_MEASURE_SOURCE_NAMES.get(f.duration_source),
        track_points=f.track_points,
        track_points_ignored=f.track_points_ignored,
        measured_fare=_money(f, "measured_fare"),
        band_low=_money(f, "band_low"),
        band_high=_money(f, "band_high"),
        reported_distance_m=(f.reported_distance_m if f.HasField("reported_distance_m") else None),
        reported_duration_s=(f.reported_duration_s if f.HasField("reported_duration_s") else None),
    )


def trip_out(
    t: trip_pb2.Trip, *, show_offer: bool = True, driver: str | None = None
) -> models.TripOut:
    """The trip as the API shows it; ``show_offer=False`` hides the pending offers (riders),
    ``driver`` shows only that driver's own (a driver does not see who else was offered)."""
    offers = []
    if show_offer:
        pending = t.current_offers or ([t.current_offer] if t.HasField("current_offer") else [])
        offers = [
            models.OfferOut(
                offer_id=o.offer_id,
                driver_id=o.driver_id,
                attempt=o.attempt,
                offered_at=_ts(o, "offered_at"),
                expires_at=_ts(o, "expires_at"),
            )
            for o in pending
            if driver is None or o.driver_id == driver
        ]
    return models.TripOut(
        id=t.id,
        rider_id=t.rider_id,
        driver_id=_opt(t.driver_id),
        vehicle_class=_CLASS_NAMES.get(t.vehicle_class),
        state=state_name(t.state),
        version=t.version,
        quote_id=t.quote_id,
        pickup=latlng(t.pickup),
        dropoff=latlng(t.dropoff),
        pickup_address=_opt(t.pickup_address),
        dropoff_address=_opt(t.dropoff_address),
        quoted_fare=_money(t, "quoted_fare"),
        final_fare=_money(t, "final_fare"),
        surge_multiplier=t.surge_multiplier,
        cancellation_fee=_money(t, "cancellation_fee"),
        distance_m=t.distance_m,
        duration_s=t.duration_s,
        cancelled_by=_ACTOR_NAMES.get(t.cancelled_by),
        cancel_reason=_opt(t.cancel_reason),
        current_offer=offers[0] if offers else None,
        current_offers=offers,
        rider_rating=t.rider_rating or None,
        driver_rating=t.driver_rating or None,
        requested_at=_ts(t, "requested_at"),
        accepted_at=_ts(t, "accepted_at"),
        arrived_at=_ts(t, "arrived_at"),
        started_at=_ts(t, "started_at"),
        completed_at=_ts(t, "completed_at"),
        cancelled_at=_ts(t, "cancelled_at"),
        ended_at=_ts(t, "ended_at"),
        flagged_at=_ts(t, "flagged_at"),
        flag_reason=_opt(t.flag_reason),
        charge_basis=_CHARGE_BASIS_NAMES.get(t.charge_basis),
        settlement=settlement_out(t.settlement) if t.HasField("settlement") else None,
        history=[
            models.TransitionOut(
                from_state=state_name(h.from_state),
                to_state=state_name(h.to_state),
                actor=_ACTOR_NAMES.get(h.actor),
                actor_id=_opt(h.actor_id),
                command=h.command,
                reason=h.reason,
                version=h.version,
                at=_ts(h, "at"),
            )
            for h in t.history
        ],
    )


_UNCHARGED_ENDS = frozenset({trip_pb2.TRIP_STATE_CANCELLED, trip_pb2.TRIP_STATE_NO_DRIVERS})


def trip_summary_out(s: rider_pb2.TripSummary) -> models.TripSummaryOut:
    """A line of the rider's history (the rider service's read model). The read model keeps a
    zero fare for a trip that ended without a charge: the API shows null."""
    fare = _money(s, "fare")
    if fare is not None and fare.amount_minor == 0 and s.state in _UNCHARGED_ENDS:
        fare = None
    if s.state == trip_pb2.TRIP_STATE_NO_DRIVERS:
        fare = None
    return models.TripSummaryOut(
        id=s.trip_id,
        state=state_name(s.state),
        pickup=latlng(s.pickup),
        dropoff=latlng(s.dropoff),
        fare=fare,
        driver_id=_opt(s.driver_id),
        vehicle_class=vehicle_class_name(s.vehicle_class),
        requested_at=_ts(s, "requested_at"),
        completed_at=_ts(s, "completed_at"),
        ended_at=_ts(s, "ended_at"),
    )


def trip_summary_of_trip(t: trip_pb2.Trip) -> models.TripSummaryOut:
    """The trip service's trip as a line of a list, priced as the rider's history prices it."""
    if t.state == trip_pb2.TRIP_STATE_COMPLETED:
        fare = _money(t, "final_fare")
    elif t.state == trip_pb2.TRIP_STATE_CANCELLED:
        fare = _money(t, "cancellation_fee")
    elif t.state == trip_pb2.TRIP_STATE_NO_DRIVERS:
        fare = None
    else:
        fare = _money(t, "quoted_fare")
    ended = t.state in _UNCHARGED_ENDS
    return models.TripSummaryOut(
        id=t.id,
        state=state_name(t.state),
        pickup=latlng(t.pickup),
        dropoff=latlng(t.dropoff),
        fare=fare,
        driver_id=_opt(t.driver_id),
        vehicle_class=vehicle_class_name(t.vehicle_class),
        requested_at=_ts(t, "requested_at"),
        completed_at=_ts(t, "completed_at"),
        ended_at=_ts(t, "ended_at") if ended else None,
    )


def merge_fresh(
    history: list[models.TripSummaryOut], fresh: list[models.TripSummaryOut]
) -> list[models.TripSummaryOut]:
    """The first page of a rider's history (a read model, ~150 ms behind the trip service)
    with the rider's newest trips as the trip service has them now: a trip on both takes the
    trip service's line (its state is the newer), and a trip booked after the page's newest
    one, which the history has not caught up with yet, goes on top. Newest first."""
    by_id = {t.id: t for t in fresh}
    lines = [by_id.pop(t.id, t) for t in history]
    newest = max((t.requested_at for t in history if t.requested_at is not None), default=None)
    new = [
        t
        for t in fresh
        if t.id in by_id
        and (newest is None or (t.requested_at is not None and t.requested_at >= newest))
    ]
    return new + lines


def notification_out(n: notification_pb2.Notification) -> models.NotificationOut:
    return models.NotificationOut(
        id=n.id,
        kind=n.kind,
        title=n.title,
        body=n.body,
        data=dict(n.data),
        trip_id=_opt(n.trip_id),
        created_at=_ts(n, "created_at"),
        read_at=_ts(n, "read_at"),
    )


def position_out(p: location_pb2.DriverPosition) -> models.DriverPositionOut:
    return models.DriverPositionOut(
        driver_id=p.driver_id,
        lat=p.lat,
        lng=p.lng,
        heading=p.heading,
        speed_mps=p.speed_mps,
        client_ts_ms=p.client_ts_ms,
        server_ts_ms=p.server_ts_ms,
        availability=_AVAILABILITY_NAMES.get(p.availability, "unknown"),
        vehicle_class=_CLASS_NAMES.get(p.vehicle_class),
    )


def reject_name(value: int) -> str | None:
    return None if value == 0 else _REJECT_NAMES.get(value, "unknown")
