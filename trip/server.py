"""gRPC servicer of rideshare.trip.v1.TripService: a thin layer over ``TripCommands``.

Each handler reads its request through ``wire``, calls one command and answers with the
result through ``wire``. Domain errors propagate: the server's interceptor
(``rideshare.grpc_server``) answers each with the status ``ERRORS`` gives it and the error's
message, an outage with UNAVAILABLE, anything else with INTERNAL and a logged id.
"""

from __future__ import annotations

from typing import Any

import grpc

from protos.trip.v1 import trip_pb2, trip_pb2_grpc
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable
from trip import wire
from trip.commands import TripCommands
from trip.domain import (
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
)

__all__ = ["ERRORS", "TripServicer"]

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


def _required(value: str, name: str) -> str:
    return wire.id_of(value, name)


class TripServicer(trip_pb2_grpc.TripServiceServicer):
    """Translates each call into a ``TripCommands`` call and its result back."""

    def __init__(self, commands: TripCommands) -> None:
        self._commands = commands

    async def EstimateFare(
        self, request: trip_pb2.EstimateFareRequest, context: Context
    ) -> trip_pb2.Quote:
        quote = await self._commands.estimate_fare(
            rider_id=_required(request.rider_id, "rider_id"),
            pickup=wire.latlng_from_proto(request.pickup, "pickup"),
            dropoff=wire.latlng_from_proto(request.dropoff, "dropoff"),
            vehicle_class=wire.vehicle_class_from_proto(request.vehicle_class),
        )
        return wire.quote_to_proto(quote)

    async def RequestTrip(
        self, request: trip_pb2.RequestTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.request_trip(
            rider_id=_required(request.rider_id, "rider_id"),
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
            viewer=wire.viewer_from_proto(request.actor, request.actor_id),
        )
        return wire.trip_to_proto(trip)

    async def ListTrips(
        self, request: trip_pb2.ListTripsRequest, context: Context
    ) -> trip_pb2.ListTripsResponse:
        trips, token = await self._commands.list_trips(
            states=[wire.state_from_proto(s) for s in request.states],
            rider_id=wire.optional_id_of(request, "rider_id"),
            driver_id=wire.optional_id_of(request, "driver_id"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return trip_pb2.ListTripsResponse(
            trips=[wire.trip_to_proto(t) for t in trips], next_page_token=token
        )

    async def CancelTrip(
        self, request: trip_pb2.CancelTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.cancel(
            _required(request.trip_id, "trip_id"),
            actor=wire.actor_from_proto(request.actor),
            actor_id=wire.id_of(request.actor_id, "actor_id", required=False),
            reason=request.reason,
        )
        return wire.trip_to_proto(trip)

    async def AcceptTrip(
        self, request: trip_pb2.AcceptTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.accept(
            _required(request.trip_id, "trip_id"),
            driver_id=_required(request.driver_id, "driver_id"),
            offer_id=_required(request.offer_id, "offer_id"),
        )
        return wire.trip_to_proto(trip)

    async def DeclineTrip(
        self, request: trip_pb2.DeclineTripRequest, context: Context
    ) -> trip_pb2.DeclineTripResponse:
        await self._commands.decline(
            _required(request.trip_id, "trip_id"),
            driver_id=_required(request.driver_id, "driver_id"),
            offer_id=_required(request.offer_id, "offer_id"),
        )
        return trip_pb2.DeclineTripResponse()

    async def ArriveAtPickup(
        self, request: trip_pb2.ArriveAtPickupRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.arrive(
            _required(request.trip_id, "trip_id"),
            driver_id=_required(request.driver_id, "driver_id"),
        )
        return wire.trip_to_proto(trip)

    async def StartTrip(
        self, request: trip_pb2.StartTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.start(
            _required(request.trip_id, "trip_id"),
            driver_id=_required(request.driver_id, "driver_id"),
        )
        return wire.trip_to_proto(trip)

    async def CompleteTrip(
        self, request: trip_pb2.CompleteTripRequest, context: Context
    ) -> trip_pb2.Trip:
        trip = await self._commands.complete(
            _required(request.trip_id, "trip_id"),
            driver_id=_required(request.driver_id, "driver_id"),
            distance_m=request.distance_m if request.HasField("distance_m") else None,
            duration_s=request.duration_s if request.HasField("duration_s") else None,
        )
        return wire.trip_to_proto(trip)

    async def RateTrip(self, request: trip_pb2.RateTripRequest, context: Context) -> trip_pb2.Trip:
        trip = await self._commands.rate(
            _required(request.trip_id, "trip_id"),
            side=wire.actor_from_proto(request.actor),
            actor_id=_required(request.actor_id, "actor_id"),
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
