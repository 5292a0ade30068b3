"""gRPC servicer of rideshare.trip.v1.TripService: a thin layer over ``TripCommands``.

Each handler reads its request through ``wire``, calls one command and answers with the
result through ``wire``. Domain errors propagate: the server's interceptor
(``rideshare.grpc_server``) answers each with the status ``ERRORS`` gives it and the error's
message, an outage with UNAVAILABLE, anything else with INTERNAL and a logged id; it lets
through only the callers ``ACCESS`` names.

A call the edge makes for an app user (rideshare/identity.py) acts as that user, whatever the
request says: the rider_id, driver_id, actor and actor_id it names must be the acting user's
(PERMISSION_DENIED otherwise), a trip the user may not see is NOT_FOUND as a missing one is,
and a list is of the user's own trips. ACTOR_ADMIN is for an admin or the operator;
ACTOR_SYSTEM is the service's own (its dispatcher and clocks), never a caller's.
"""

from __future__ import annotations

from typing import Any

import grpc

from protos.trip.v1 import trip_pb2, trip_pb2_grpc
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable
from rideshare.identity import (
    AccessTable,
    NotActingAsError,
    Role,
    access_table,
    allow,
    current_user,
    is_admin_call,
    require_acting_as,
)
from trip import explain, wire
from trip.commands import TripCommands
from trip.domain import (
    Actor,
    AlreadyRatedError,
    ConcurrencyError,
    DriverUnavailableError,
    InvalidArgumentError,
    InvalidTransition,
    NotFoundError,
    OfferExpiredError,
    OfferMismatchError,
    PermissionDeniedError,
    QuoteExpiredError,
    QuoteUsedError,
    RiderHasLiveTripError,
    Viewer,
)
from trip.explain import DispatchRound
from trip.matcher import Candidate

__all__ = ["ACCESS", "ERRORS", "TripServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidTransition: grpc.StatusCode.FAILED_PRECONDITION,
    QuoteExpiredError: grpc.StatusCode.FAILED_PRECONDITION,
    QuoteUsedError: grpc.StatusCode.FAILED_PRECONDITION,
    OfferExpiredError: grpc.StatusCode.FAILED_PRECONDITION,
    OfferMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    RiderHasLiveTripError: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyRatedError: grpc.StatusCode.FAILED_PRECONDITION,
    DriverUnavailableError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ConcurrencyError: grpc.StatusCode.ABORTED,
}
"""Every domain error -> the status it is answered with (anything else is INTERNAL)."""

_RIDER: tuple[Role, ...] = ("rider",)
_DRIVER: tuple[Role, ...] = ("driver",)
_PARTIES: tuple[Role, ...] = ("rider", "driver")
ACCESS: AccessTable = access_table(
    trip_pb2.DESCRIPTOR.services_by_name["TripService"],
    {
        "EstimateFare": allow(users=_RIDER),
        "RequestTrip": allow(users=_RIDER),
        # The edge reads trips as itself for its live pushes (one read for every party).
        "GetTrip": allow("edge", users=(*_PARTIES, "admin")),
        "ListTrips": allow(users=(*_PARTIES, "admin")),
        "CancelTrip": allow(users=(*_PARTIES, "admin")),
        "AcceptTrip": allow(users=_DRIVER),
        "DeclineTrip": allow(users=_DRIVER),
        "ArriveAtPickup": allow(users=_DRIVER),
        "StartTrip": allow(users=_DRIVER),
        "CompleteTrip": allow(users=_DRIVER),
        "RateTrip": allow(users=_PARTIES),
        # The location service rebuilds its availability index from it.
        "ListActiveAssignments": allow("location"),
        # Who was considered for a trip and why: the drivers' positions are not a party's.
        "ExplainDispatch": allow(users=("admin",)),
    },
)
"""Who may call each method (rideshare.identity); the operator may call every one."""

_ACTOR_OF_ROLE = {"rider": Actor.RIDER, "driver": Actor.DRIVER, "admin": Actor.ADMIN}


def _required(value: str, name: str) -> str:
    return wire.id_of(value, name)


def _check_actor(actor: Actor, actor_id: str) -> None:
    """The actor a request names must be the acting user, in its role and by its id."""
    if actor is Actor.SYSTEM:
        raise NotActingAsError("ACTOR_SYSTEM is the trip service's own, not a caller's")
    if actor is Actor.ADMIN and not is_admin_call():
        raise NotActingAsError("ACTOR_ADMIN is for an admin or the operator")
    user = current_user()
    if user is not None and _ACTOR_OF_ROLE[user.role] is not actor:
        raise NotActingAsError(f"actor must be the acting {user.role}")
    require_acting_as(actor_id, field="actor_id")


def _viewer(actor: int, actor_id: str) -> Viewer:
    """Who reads a trip: the acting user when there is one (a reader the request names must
    be that user); else the calling service or operator, as the request names it
    (unspecified: reading for itself)."""
    user = current_user()
    if user is None:
        return wire.viewer_from_proto(actor, actor_id)
    if actor != trip_pb2.ACTOR_UNSPECIFIED:
        _check_actor(wire.actor_from_proto(actor), actor_id)
    return Viewer(_ACTOR_OF_ROLE[user.role], user.id)


def _own_filter(rider_id: str | None, driver_id: str | None) -> None:
    """A rider or driver lists their own trips only: the filter must name them."""
    user = current_user()
    if user is None or user.role == "admin":
        return
    named = rider_id if user.role == "rider" else driver_id
    if named is None:
        raise NotActingAsError(f"a {user.role} lists their own trips: set {user.role}_id")
    require_acting_as(named, role=user.role, field=f"{user.role}_id")


def _driver(driver_id: str) -> str:
    """The request's driver: required, and the acting driver."""
    require_acting_as(_required(driver_id, "driver_id"), role="driver", field="driver_id")
    return driver_id


class TripServicer(trip_pb2_grpc.TripServiceServicer):
    """Translates each call into a ``TripCommands`` call and its result back."""

    def __init__(self, commands: TripCommands) -> None:
        self._commands = commands

    async def EstimateFare(
        self, request: trip_pb2.EstimateFareRequest, context: Context
    ) -> trip_pb2.Quote:
        rider_id = _required(request.rider_id, "rider_id")
        require_acting_as(rider_id, role="rider", field="rider_id")
        quote = await self._commands.estimate_fare(
            rider_id=rider_id,
            pickup=wire.latlng_from_proto(request.pickup, "pickup"),
            dropoff=wire.latlng_from_proto(request.dropoff, "dropoff"),
            vehicle_class=wire.vehicle_class_from_proto(request.vehicle_class),
        )
        return wire.quote_to_proto(quote)

    async def RequestTrip(
        self, request: trip_pb2.RequestTripRequest, context: Context
    ) -> trip_pb2.Trip:
        rider_id = _required(request.rider_id, "rider_id")
        require_acting_as(rider_id, role="rider", field="rider_id")
        trip = await self._commands.request_trip(
            rider_id=rider_id,
            quote_id=_required(request.quote_id, "quote_id"),
            pickup=wire.latlng_from_proto(request.pickup, "pickup"),
            dropoff=wire.latlng_from_proto(request.dropoff, "dropoff"),
            pickup_address=request.pickup_address,
            dropoff_address=request.dropoff_address,
        )
        return wire.trip_to_proto(trip)

    async def GetTrip(self, request: trip_pb2.GetTripRequest, context: Context) -> trip_pb2.Trip:
        trip = await self._commands.get_trip(
            _required(request.trip_id, "trip_id"),
            viewer=_viewer(request.actor, request.actor_id),
        )
        return wire.trip_to_proto(trip)

    async def ListTrips(
        self, request: trip_pb2.ListTripsRequest, context: Context
    ) -> trip_pb2.ListTripsResponse:
        rider_id = wire.optional_id_of(request, "rider_id")
        driver_id = wire.optional_id_of(request, "driver_id")
        _own_filter(rider_id, driver_id)
        trips, token = await self._commands.list_trips(
            states=[wire.state_from_proto(s) for s in request.states],
            rider_id=rider_id,
            driver_id=driver_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return trip_pb2.ListTripsResponse(
            trips=[wire.trip_to_proto(t) for t in trips], next_page_token=token
        )

    async def CancelTrip(
        self, request: trip_pb2.CancelTripRequest, context: Context
    ) -> trip_pb2.Trip:
        actor = wire.actor_from_proto(request.actor)
        actor_id = wire.id_of(request.actor_id, "actor_id", required=False)
        _check_actor(actor, actor_id)
        trip = await self._commands.cancel(
            _required(request.trip_id, "trip_id"),
            actor=actor,
            actor_id=actor_id,
            reason=request.reason,
        )
        return wire.trip_to_proto(trip)

    async def AcceptTrip(
        self, request: trip_pb2.AcceptTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.accept(
            _required(request.trip_id, "trip_id"),
            driver_id=_driver(request.driver_id),
            offer_id=_required(request.offer_id, "offer_id"),
        )
        return wire.trip_to_proto(trip)

    async def DeclineTrip(
        self, request: trip_pb2.DeclineTripRequest, context: Context
    ) -> trip_pb2.DeclineTripResponse:
        await self._commands.decline(
            _required(request.trip_id, "trip_id"),
            driver_id=_driver(request.driver_id),
            offer_id=_required(request.offer_id, "offer_id"),
        )
        return trip_pb2.DeclineTripResponse()

    async def ArriveAtPickup(
        self, request: trip_pb2.ArriveAtPickupRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.arrive(
            _required(request.trip_id, "trip_id"),
            driver_id=_driver(request.driver_id),
        )
        return wire.trip_to_proto(trip)

    async def StartTrip(
        self, request: trip_pb2.StartTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.start(
            _required(request.trip_id, "trip_id"),
            driver_id=_driver(request.driver_id),
        )
        return wire.trip_to_proto(trip)

    async def CompleteTrip(
        self, request: trip_pb2.CompleteTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.complete(
            _required(request.trip_id, "trip_id"),
            driver_id=_driver(request.driver_id),
            distance_m=request.distance_m if request.HasField("distance_m") else None,
            duration_s=request.duration_s if request.HasField("duration_s") else None,
        )
        return wire.trip_to_proto(trip)

    async def RateTrip(self, request: trip_pb2.RateTripRequest, context: Context) -> trip_pb2.Trip:
        side = wire.actor_from_proto(request.actor)
        actor_id = _required(request.actor_id, "actor_id")
        if side in (Actor.RIDER, Actor.DRIVER):  # any other side is the domain's error
            _check_actor(side, actor_id)
        trip = await self._commands.rate(
            _required(request.trip_id, "trip_id"),
            side=side,
            actor_id=actor_id,
            stars=request.stars,
            comment=request.comment,
        )
        return wire.trip_to_proto(trip)

    async def ListActiveAssignments(
        self, request: trip_pb2.ListActiveAssignmentsRequest, context: Context
    ) -> trip_pb2.ListActiveAssignmentsResponse:
        assignments, token = await self._commands.active_assignments(
            page_size=request.page_size, page_token=request.page_token
        )
        return trip_pb2.ListActiveAssignmentsResponse(
            assignments=[wire.assignment_to_proto(a) for a in assignments],
            next_page_token=token,
        )

    async def ExplainDispatch(
        self, request: trip_pb2.ExplainDispatchRequest, context: Context
    ) -> trip_pb2.ExplainDispatchResponse:
        trip, rounds = await self._commands.explain_dispatch(_required(request.trip_id, "trip_id"))
        return trip_pb2.ExplainDispatchResponse(
            trip_id=trip.id,
            state=wire.state_to_proto(trip.state),
            rounds=[_round_to_proto(r, outcomes) for r, outcomes in rounds],
        )


def _candidate_to_proto(c: Candidate) -> trip_pb2.DispatchCandidate:
    return trip_pb2.DispatchCandidate(
        driver_id=c.driver_id,
        distance_m=c.distance_m,
        pickup_s=c.pickup_s,
        cost=c.cost,
        reason=c.reason.value,
    )


def _round_to_proto(r: DispatchRound, outcomes: list[str]) -> trip_pb2.DispatchRound:
    message = trip_pb2.DispatchRound(
        round=r.number,
        policy=r.policy,
        window_trips=r.window_trips,
        candidates=[_candidate_to_proto(c) for c in r.candidates],
        excluded=[_candidate_to_proto(c) for c in r.excluded],
        offers=[
            trip_pb2.DispatchOffer(driver_id=d, offer_id=o, outcome=outcome)
            for (d, o), outcome in zip(r.offers, outcomes, strict=True)
        ],
        outcome=explain.outcome_of(outcomes),
        detail=r.gave_up,
    )
    if r.at is not None:
        message.at.FromDatetime(r.at)
    return message
