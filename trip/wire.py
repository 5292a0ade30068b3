"""Domain values <-> protobuf messages: the API's requests and answers, its page tokens, every
event payload the trip service writes to its outbox, and its calls to the location service.

Pure: no I/O, and nothing here imports the service's adapters. ``server`` reads requests and
writes answers with it; ``commands`` and ``dispatch`` build their outbox events with it;
the location clients in ``dispatch`` and ``sweeper`` build requests and read replies with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from protos import events as subjects
from protos.common.v1 import common_pb2
from protos.location.v1 import location_pb2
from protos.trip.v1 import events_pb2, trip_pb2
from rideshare import ids, paging
from trip.domain import (
    Actor,
    Assignment,
    FareBasis,
    FareRule,
    FareSettlement,
    InvalidArgumentError,
    LatLng,
    Money,
    Nearby,
    Offer,
    OfferEndReason,
    Quote,
    TrackMeasurement,
    Trip,
    TripState,
    VehicleClass,
    Viewer,
)
from trip.liveness import LivenessRule
from trip.pricing import MeasureSource

__all__ = [
    "Event",
    "accepted",
    "actor_from_proto",
    "actor_to_proto",
    "arrived",
    "assignment_to_proto",
    "cancelled",
    "charge_basis_to_proto",
    "completed",
    "decode_page_token",
    "driver_cancelled",
    "encode_page_token",
    "flagged",
    "id_of",
    "latlng_from_proto",
    "liveness_rule_to_proto",
    "nearby_from_proto",
    "nearest_drivers_request",
    "no_drivers",
    "offer_end_reason_to_proto",
    "offer_ended",
    "offered",
    "offers_ended",
    "optional_id_of",
    "position_time_from_proto",
    "quote_to_proto",
    "rated",
    "requested",
    "settlement_to_proto",
    "started",
    "state_from_proto",
    "state_to_proto",
    "track_from_proto",
    "trip_distance_request",
    "trip_to_proto",
    "trips_scope",
    "vehicle_class_from_proto",
    "vehicle_class_to_proto",
    "viewer_from_proto",
]

Event = tuple[str, Message]
"""An outbox event: (subject, payload)."""

_VEHICLE_PREFIX = "VEHICLE_CLASS_"
_STATE_PREFIX = "TRIP_STATE_"
_ACTOR_PREFIX = "ACTOR_"


# --- enums ---------------------------------------------------------------------------------


E = TypeVar("E", VehicleClass, TripState, Actor)


def _enum_from_proto(
    names: Callable[[Any], str], prefix: str, domain_enum: type[E], value: int, what: str
) -> E:
    """The domain member named like proto value ``value`` (less ``prefix``); INVALID_ARGUMENT
    for UNSPECIFIED and unknown numbers."""
    try:
        return domain_enum(names(value).removeprefix(prefix))
    except ValueError:
        raise InvalidArgumentError(f"{what} {value} must be specified and valid") from None


def vehicle_class_from_proto(value: int) -> VehicleClass:
    """The domain class of a proto VehicleClass; INVALID_ARGUMENT for UNSPECIFIED/unknown."""
    names = common_pb2.VehicleClass.Name
    return _enum_from_proto(names, _VEHICLE_PREFIX, VehicleClass, value, "vehicle_class")


def vehicle_class_to_proto(value: VehicleClass) -> common_pb2.VehicleClass.ValueType:
    return common_pb2.VehicleClass.Value(_VEHICLE_PREFIX + value.value)


def state_from_proto(value: int) -> TripState:
    names = trip_pb2.TripState.Name
    return _enum_from_proto(names, _STATE_PREFIX, TripState, value, "trip state")


def state_to_proto(value: TripState) -> trip_pb2.TripState.ValueType:
    return trip_pb2.TripState.Value(_STATE_PREFIX + value.value)


def actor_from_proto(value: int) -> Actor:
    return _enum_from_proto(trip_pb2.Actor.Name, _ACTOR_PREFIX, Actor, value, "actor")


def actor_to_proto(value: Actor | None) -> trip_pb2.Actor.ValueType:
    if value is None:
        return trip_pb2.ACTOR_UNSPECIFIED
    return trip_pb2.Actor.Value(_ACTOR_PREFIX + value.value)


def charge_basis_to_proto(value: FareBasis | None) -> trip_pb2.ChargeBasis.ValueType:
    if value is None:
        return trip_pb2.CHARGE_BASIS_UNSPECIFIED
    return trip_pb2.ChargeBasis.Value("CHARGE_BASIS_" + value.value)


def fare_rule_to_proto(value: FareRule) -> trip_pb2.FareRule.ValueType:
    return trip_pb2.FareRule.Value("FARE_RULE_" + value.value)


def measure_source_to_proto(value: MeasureSource) -> trip_pb2.MeasureSource.ValueType:
    return trip_pb2.MeasureSource.Value("MEASURE_SOURCE_" + value.value)


def offer_end_reason_to_proto(value: OfferEndReason) -> events_pb2.OfferEndReason.ValueType:
    return events_pb2.OfferEndReason.Value("OFFER_END_REASON_" + value.value)


def liveness_rule_to_proto(value: LivenessRule | None) -> events_pb2.LivenessRule.ValueType:
    if value is None:
        return events_pb2.LIVENESS_RULE_UNSPECIFIED
    return events_pb2.LivenessRule.Value("LIVENESS_RULE_" + value.value)


# --- ids and callers ----------------------------------------------------------------------


def id_of(value: str, field: str, *, required: bool = True) -> str:
    """A request's id field: well formed (rideshare.ids), or empty where not ``required``;
    INVALID_ARGUMENT naming ``field`` otherwise."""
    try:
        return ids.check_id(value, field, required=required)
    except ids.InvalidIdError as exc:
        raise InvalidArgumentError(str(exc)) from None


def optional_id_of(message: Message, field: str) -> str | None:
    """An ``optional`` id field (a filter): None when absent, else as :func:`id_of`
    (present but empty is malformed)."""
    if not message.HasField(field):
        return None
    return id_of(getattr(message, field), field)


def viewer_from_proto(actor: int, actor_id: str) -> Viewer:
    """Who reads, from a GetTrip request's actor and actor_id: unspecified is a service
    reading for itself (SYSTEM); a user's id is required (INVALID_ARGUMENT for an unknown
    actor or a malformed id)."""
    if actor == trip_pb2.ACTOR_UNSPECIFIED:
        actor = trip_pb2.ACTOR_SYSTEM
    who = actor_from_proto(actor)
    return Viewer(who, id_of(actor_id, "actor_id", required=who is not Actor.SYSTEM))


# --- values --------------------------------------------------------------------------------


def latlng_from_proto(point: common_pb2.LatLng, name: str) -> LatLng:
    """A validated point; INVALID_ARGUMENT naming the field when it is out of range."""
    try:
        return LatLng(point.lat, point.lng)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from None


def _latlng(point: LatLng) -> common_pb2.LatLng:
    return common_pb2.LatLng(lat=point.lat, lng=point.lng)


def _money(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency=money.currency)


def _ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def quote_to_proto(quote: Quote) -> trip_pb2.Quote:
    return trip_pb2.Quote(
        quote_id=quote.quote_id,
        rider_id=quote.rider_id,
        pickup=_latlng(quote.pickup),
        dropoff=_latlng(quote.dropoff),
        vehicle_class=vehicle_class_to_proto(quote.vehicle_class),
        price=_money(quote.price),
        surge_multiplier=quote.surge_multiplier,
        distance_m=quote.distance_m,
        duration_s=quote.duration_s,
        created_at=_ts(quote.created_at),
        expires_at=_ts(quote.expires_at),
    )


def _offer(offer: Offer) -> trip_pb2.Offer:
    return trip_pb2.Offer(
        offer_id=offer.offer_id,
        driver_id=offer.driver_id,
        attempt=offer.attempt,
        offered_at=_ts(offer.offered_at),
        expires_at=_ts(offer.expires_at),
    )


def trip_to_proto(trip: Trip) -> trip_pb2.Trip:
    """The API's Trip, history included when the domain trip carries it."""
    message = trip_pb2.Trip(
        id=trip.id,
        rider_id=trip.rider_id,
        driver_id=trip.driver_id or "",
        vehicle_class=vehicle_class_to_proto(trip.vehicle_class),
        state=state_to_proto(trip.state),
        version=trip.version,
        quote_id=trip.quote_id,
        pickup=_latlng(trip.pickup),
        dropoff=_latlng(trip.dropoff),
        pickup_address=trip.pickup_address,
        dropoff_address=trip.dropoff_address,
        quoted_fare=_money(trip.quoted_fare),
        surge_multiplier=trip.surge_multiplier,
        distance_m=trip.distance_m or 0,
        duration_s=trip.duration_s or 0,
        cancelled_by=actor_to_proto(trip.cancelled_by),
        cancel_reason=trip.cancel_reason,
        rider_rating=trip.rider_rating or 0,
        driver_rating=trip.driver_rating or 0,
        requested_at=_ts(trip.requested_at),
        flag_reason=trip.flag_reason,
        charge_basis=charge_basis_to_proto(trip.fare_basis),
    )
    if trip.final_fare is not None:
        message.final_fare.CopyFrom(_money(trip.final_fare))
    if trip.cancellation_fee is not None:
        message.cancellation_fee.CopyFrom(_money(trip.cancellation_fee))
    if trip.offer is not None:
        message.current_offer.CopyFrom(_offer(trip.offer))
    message.current_offers.extend(_offer(o) for o in trip.offers)
    if trip.settlement is not None:
        message.settlement.CopyFrom(settlement_to_proto(trip.settlement))
    for field in (
        "accepted_at",
        "arrived_at",
        "started_at",
        "completed_at",
        "cancelled_at",
        "ended_at",
        "flagged_at",
    ):
        when = getattr(trip, field)
        if when is not None:
            getattr(message, field).CopyFrom(_ts(when))
    for record in trip.history:
        message.history.add(
            from_state=(
                state_to_proto(record.from_state)
                if record.from_state is not None
                else trip_pb2.TRIP_STATE_UNSPECIFIED
            ),
            to_state=state_to_proto(record.to_state),
            actor=actor_to_proto(record.actor),
            actor_id=record.actor_id,
            command=record.command,
            reason=record.reason,
            version=record.version,
            at=_ts(record.at),
        )
    return message


def settlement_to_proto(settlement: FareSettlement) -> trip_pb2.FareSettlement:
    """The basis of a final fare, as Trip.fare_settlement carries it."""
    message = trip_pb2.FareSettlement(
        rule=fare_rule_to_proto(settlement.rule),
        flagged_for_review=settlement.flagged,
        quoted_fare=_money(settlement.quoted),
        quoted_distance_m=settlement.quoted_distance_m,
        quoted_duration_s=settlement.quoted_duration_s,
        distance_source=measure_source_to_proto(settlement.distance_source),
        measured_duration_s=settlement.measured_duration_s,
        duration_source=measure_source_to_proto(settlement.duration_source),
        track_points=settlement.track_points,
        track_points_ignored=settlement.track_points_ignored,
        band_low=_money(settlement.band_low),
        band_high=_money(settlement.band_high),
    )
    if settlement.measured_distance_m is not None:
        message.measured_distance_m = settlement.measured_distance_m
    if settlement.measured_fare is not None:
        message.measured_fare.CopyFrom(_money(settlement.measured_fare))
    if settlement.reported_distance_m is not None:
        message.reported_distance_m = settlement.reported_distance_m
    if settlement.reported_duration_s is not None:
        message.reported_duration_s = settlement.reported_duration_s
    return message


def assignment_to_proto(assignment: Assignment) -> trip_pb2.DriverAssignment:
    """A driver held by a live trip, as ListActiveAssignments answers it."""
    return trip_pb2.DriverAssignment(
        driver_id=assignment.driver_id,
        trip_id=assignment.trip_id,
        kind=(
            trip_pb2.ASSIGNMENT_KIND_OFFERED
            if assignment.offered
            else trip_pb2.ASSIGNMENT_KIND_ON_TRIP
        ),
    )


# --- the location service ----------------------------------------------------------------


def nearest_drivers_request(
    point: LatLng,
    *,
    radius_m: float,
    limit: int,
    vehicle_class: VehicleClass | None,
    exclude: frozenset[str],
) -> location_pb2.NearestDriversRequest:
    """NearestDrivers for available drivers of ``vehicle_class`` (any class when None)."""
    request = location_pb2.NearestDriversRequest(
        lat=point.lat,
        lng=point.lng,
        radius_m=radius_m,
        limit=limit,
        exclude_driver_ids=sorted(exclude),
    )
    if vehicle_class is not None:
        request.vehicle_class = vehicle_class_to_proto(vehicle_class)
    return request


def nearby_from_proto(reply: location_pb2.NearestDriversResponse) -> list[Nearby]:
    """NearestDrivers' hits, in its order (nearest first)."""
    return [Nearby(d.driver_id, d.distance_m) for d in reply.drivers]


def trip_distance_request(
    trip_id: str, *, since: datetime, until: datetime
) -> location_pb2.GetTripDistanceRequest:
    """GetTripDistance over the ride from ``since`` to ``until`` (instants of the clock)."""
    return location_pb2.GetTripDistanceRequest(
        trip_id=trip_id,
        since_ms=int(since.timestamp() * 1000),
        until_ms=max(1, int(until.timestamp() * 1000)),
    )


def track_from_proto(reply: location_pb2.TripDistance) -> TrackMeasurement:
    """The measurement GetTripDistance answered, to the whole metre (half up)."""
    return TrackMeasurement(
        distance_m=int(max(0.0, reply.distance_m) + 0.5),
        points=max(0, reply.points_used),
        points_ignored=max(0, reply.points_ignored),
    )


def position_time_from_proto(position: location_pb2.DriverPosition) -> datetime | None:
    """When the location service accepted the position (its clock); None when it has none."""
    if position.server_ts_ms <= 0:
        return None
    return datetime.fromtimestamp(position.server_ts_ms / 1000, UTC)


# --- page tokens ---------------------------------------------------------------------------


def trips_scope(states: Sequence[TripState], *, rider_id: str | None, driver_id: str | None) -> str:
    """The page-token scope of one ListTrips query: its filters, so that a token is good
    only for the query that made it."""
    names = ",".join(sorted({s.value for s in states}))
    return f"trip.trips:r={rider_id or ''}:d={driver_id or ''}:s={names}"


def encode_page_token(trip: Trip, *, scope: str) -> str:
    """ListTrips' opaque token for the page after ``trip`` in the query ``scope``."""
    return paging.encode_page_token(scope, [trip.requested_at, trip.id])


def decode_page_token(token: str, *, scope: str) -> tuple[datetime, str]:
    """The (requested_at, id) a ListTrips page token stands for; InvalidArgumentError if it
    is malformed or was made for another query."""
    try:
        at, trip_id = paging.decode_page_token(token, scope, key_types=(datetime, str))
    except paging.InvalidPageError as exc:
        raise InvalidArgumentError(str(exc)) from None
    assert isinstance(at, datetime) and isinstance(trip_id, str)
    return at, trip_id


# --- event payloads ------------------------------------------------------------------------


def _with_trip(subject: str, message: Any, trip: Trip) -> Event:
    """``(subject, message)`` with the whole trip after the event in ``message.trip``, when
    ``trip`` carries its whole history (loaded with it, or new): a consumer showing the trip
    then need not read it back. Dispatch loads trips without history, so its events leave
    ``trip`` unset rather than carry a trip that GetTrip would show differently."""
    if trip.history and trip.history[0].from_state is None:
        message.trip.CopyFrom(trip_to_proto(trip))
    return subject, message


def requested(trip: Trip) -> Event:
    return _with_trip(
        subjects.TRIP_REQUESTED,
        events_pb2.TripRequested(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            quote_id=trip.quote_id,
            vehicle_class=vehicle_class_to_proto(trip.vehicle_class),
            pickup=_latlng(trip.pickup),
            dropoff=_latlng(trip.dropoff),
            pickup_address=trip.pickup_address,
            dropoff_address=trip.dropoff_address,
            fare=_money(trip.quoted_fare),
            surge_multiplier=trip.surge_multiplier,
            requested_at=_ts(trip.requested_at),
        ),
        trip,
    )


def offered(trip: Trip, *, distance_to_pickup_m: float, offer: Offer | None = None) -> Event:
    """trip.offered for the trip's pending ``offer`` (its first one when not named)."""
    offer = offer or trip.offer
    assert offer is not None
    return subjects.TRIP_OFFERED, events_pb2.TripOffered(
        trip_id=trip.id,
        offer_id=offer.offer_id,
        driver_id=offer.driver_id,
        rider_id=trip.rider_id,
        pickup=_latlng(trip.pickup),
        dropoff=_latlng(trip.dropoff),
        pickup_address=trip.pickup_address,
        dropoff_address=trip.dropoff_address,
        vehicle_class=vehicle_class_to_proto(trip.vehicle_class),
        fare=_money(trip.quoted_fare),
        distance_to_pickup_m=distance_to_pickup_m,
        attempt=offer.attempt,
        expires_at=_ts(offer.expires_at),
    )


def offers_ended(trip: Trip, reason: OfferEndReason, *, but: str | None = None) -> list[Event]:
    """trip.offer_ended for each of ``trip``'s pending offers but the one ``but`` names: the
    trip (as it was before) is ending them all at once (cancelled, given up, accepted)."""
    return [offer_ended(trip, o, reason) for o in trip.offers if o.offer_id != but]


def offer_ended(trip: Trip, offer: Offer, reason: OfferEndReason) -> Event:
    # ``trip`` is the trip before the offer ended: it is not attached (consumers read it).
    return subjects.TRIP_OFFER_ENDED, events_pb2.TripOfferEnded(
        trip_id=trip.id,
        offer_id=offer.offer_id,
        driver_id=offer.driver_id,
        rider_id=trip.rider_id,
        reason=offer_end_reason_to_proto(reason),
    )


def accepted(trip: Trip, *, offer_id: str) -> Event:
    assert trip.driver_id is not None and trip.accepted_at is not None
    return _with_trip(
        subjects.TRIP_ACCEPTED,
        events_pb2.TripAccepted(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id,
            offer_id=offer_id,
            vehicle_class=vehicle_class_to_proto(trip.vehicle_class),
            pickup=_latlng(trip.pickup),
            pickup_address=trip.pickup_address,
            accepted_at=_ts(trip.accepted_at),
        ),
        trip,
    )


def driver_cancelled(
    before: Trip, after: Trip, *, reason: str, at: datetime, rule: LivenessRule | None = None
) -> Event:
    """trip.driver_cancelled: the driver left the trip, or (``rule`` set) the system took it
    from them."""
    return _with_trip(
        subjects.TRIP_DRIVER_CANCELLED,
        events_pb2.TripDriverCancelled(
            trip_id=after.id,
            rider_id=after.rider_id,
            driver_id=before.driver_id or "",
            reason=reason,
            from_state=state_to_proto(before.state),
            cancelled_at=_ts(at),
            liveness_rule=liveness_rule_to_proto(rule),
        ),
        after,
    )


def arrived(trip: Trip) -> Event:
    assert trip.arrived_at is not None
    return _with_trip(
        subjects.TRIP_ARRIVED,
        events_pb2.TripArrived(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id or "",
            pickup=_latlng(trip.pickup),
            arrived_at=_ts(trip.arrived_at),
        ),
        trip,
    )


def started(trip: Trip) -> Event:
    assert trip.started_at is not None
    return _with_trip(
        subjects.TRIP_STARTED,
        events_pb2.TripStarted(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id or "",
            started_at=_ts(trip.started_at),
        ),
        trip,
    )


def completed(
    trip: Trip, *, by: Actor = Actor.DRIVER, rule: LivenessRule | None = None, reason: str = ""
) -> Event:
    """trip.completed: by the driver, or by SYSTEM (``rule`` and ``reason`` say why)."""
    assert trip.completed_at is not None and trip.final_fare is not None
    return _with_trip(
        subjects.TRIP_COMPLETED,
        events_pb2.TripCompleted(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id or "",
            vehicle_class=vehicle_class_to_proto(trip.vehicle_class),
            pickup=_latlng(trip.pickup),
            dropoff=_latlng(trip.dropoff),
            fare=_money(trip.final_fare),
            quoted_fare=_money(trip.quoted_fare),
            distance_m=trip.distance_m or 0,
            duration_s=trip.duration_s or 0,
            requested_at=_ts(trip.requested_at),
            completed_at=_ts(trip.completed_at),
            completed_by=actor_to_proto(by),
            charge_basis=charge_basis_to_proto(trip.fare_basis),
            liveness_rule=liveness_rule_to_proto(rule),
            reason=reason,
        ),
        trip,
    )


def cancelled(
    before: Trip, after: Trip, *, actor_id: str, rule: LivenessRule | None = None
) -> Event:
    """trip.cancelled; driver_id is the assigned driver or the one holding the offer."""
    assert after.cancelled_at is not None
    driver = before.driver_id or (before.offer.driver_id if before.offer is not None else "")
    message = events_pb2.TripCancelled(
        trip_id=after.id,
        rider_id=after.rider_id,
        driver_id=driver,
        cancelled_by=actor_to_proto(after.cancelled_by),
        actor_id=actor_id,
        reason=after.cancel_reason,
        pickup=_latlng(after.pickup),
        dropoff=_latlng(after.dropoff),
        requested_at=_ts(after.requested_at),
        cancelled_at=_ts(after.cancelled_at),
    )
    if after.cancellation_fee is not None:
        message.fee.CopyFrom(_money(after.cancellation_fee))
    message.from_state = state_to_proto(before.state)
    message.liveness_rule = liveness_rule_to_proto(rule)
    return _with_trip(subjects.TRIP_CANCELLED, message, after)


def no_drivers(trip: Trip, *, max_radius_m: float, rule: LivenessRule | None = None) -> Event:
    """trip.no_drivers; its reason is the last history record's (``exhaust``'s)."""
    assert trip.ended_at is not None
    return _with_trip(
        subjects.TRIP_NO_DRIVERS,
        events_pb2.TripNoDrivers(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            pickup=_latlng(trip.pickup),
            dropoff=_latlng(trip.dropoff),
            offers_made=trip.offer_attempts,
            max_radius_m=max_radius_m,
            requested_at=_ts(trip.requested_at),
            ended_at=_ts(trip.ended_at),
            reason=trip.history[-1].reason if trip.history else "",
            liveness_rule=liveness_rule_to_proto(rule),
        ),
        trip,
    )


def flagged(trip: Trip, *, rule: LivenessRule, silent_since: datetime) -> Event:
    """trip.flagged: the ride needs an operator's eye; it goes on."""
    assert trip.flagged_at is not None
    return _with_trip(
        subjects.TRIP_FLAGGED,
        events_pb2.TripFlagged(
            trip_id=trip.id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id or "",
            liveness_rule=liveness_rule_to_proto(rule),
            reason=trip.flag_reason,
            silent_since=_ts(silent_since),
            flagged_at=_ts(trip.flagged_at),
        ),
        trip,
    )


def rated(trip: Trip, *, side: Actor, rater_id: str, stars: int, comment: str) -> Event:
    ratee = (trip.driver_id or "") if side is Actor.RIDER else trip.rider_id
    return _with_trip(
        subjects.TRIP_RATED,
        events_pb2.TripRated(
            trip_id=trip.id,
            rater=actor_to_proto(side),
            rater_id=rater_id,
            ratee_id=ratee,
            stars=stars,
            comment=comment,
        ),
        trip,
    )
