"""gRPC servicer of rideshare.rider.v1.RiderService: proto <-> domain, errors -> codes."""

from __future__ import annotations

from typing import Any

import grpc

from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2, rider_pb2_grpc
from rider import domain
from rider.domain import (
    BadCredentialsError,
    InvalidRiderError,
    PhoneTakenError,
    Rider,
    RiderError,
    RiderNotFoundError,
    TripSummary,
)
from rider.store import RiderStore
from rideshare.credentials import HasherBusyError, PasswordHasher
from rideshare.db import DATA_ERRORS
from rideshare.grpc_errors import StatusTable, abort_with

__all__ = ["RiderServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ERRORS: StatusTable = {
    **DATA_ERRORS,
    InvalidRiderError: grpc.StatusCode.INVALID_ARGUMENT,
    RiderNotFoundError: grpc.StatusCode.NOT_FOUND,
    PhoneTakenError: grpc.StatusCode.ALREADY_EXISTS,
    BadCredentialsError: grpc.StatusCode.UNAUTHENTICATED,
    # Alive but at its KDF capacity: retry later (429), never UNAVAILABLE, which would count
    # against the edge's circuit breaker for every call of the service.
    HasherBusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def rider_to_proto(rider: Rider) -> rider_pb2.Rider:
    message = rider_pb2.Rider(
        id=rider.id,
        name=rider.name,
        phone=rider.phone,
        email=rider.email,
        rating_avg=rider.rating_avg,
        rating_count=rider.rating_count,
    )
    message.created_at.FromDatetime(rider.created_at)
    message.updated_at.FromDatetime(rider.updated_at)
    return message


def trip_to_proto(trip: TripSummary) -> rider_pb2.TripSummary:
    message = rider_pb2.TripSummary(
        trip_id=trip.trip_id,
        state=trip.state,  # type: ignore[arg-type]  # the proto enum number, stored as is
        driver_id=trip.driver_id,
        vehicle_class=trip.vehicle_class,  # type: ignore[arg-type]
    )
    if trip.pickup is not None:
        message.pickup.CopyFrom(common_pb2.LatLng(lat=trip.pickup[0], lng=trip.pickup[1]))
    if trip.dropoff is not None:
        message.dropoff.CopyFrom(common_pb2.LatLng(lat=trip.dropoff[0], lng=trip.dropoff[1]))
    if trip.fare is not None:
        message.fare.CopyFrom(common_pb2.Money(amount_minor=trip.fare[0], currency=trip.fare[1]))
    if trip.requested_at is not None:
        message.requested_at.FromDatetime(trip.requested_at)
    if trip.completed_at is not None:
        message.completed_at.FromDatetime(trip.completed_at)
    if trip.ended_at is not None:
        message.ended_at.FromDatetime(trip.ended_at)
    return message


class RiderServicer(rider_pb2_grpc.RiderServiceServicer):
    """Rider accounts and their trip history; the KDF runs in the bounded PasswordHasher."""

    def __init__(self, store: RiderStore, hasher: PasswordHasher) -> None:
        self._store = store
        self._hasher = hasher

    async def CreateRider(
        self, request: rider_pb2.CreateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        try:
            new = domain.new_rider(
                name=request.name,
                phone=request.phone,
                email=request.email if request.HasField("email") else None,
                password=request.password,
            )
            password_hash = await self._hasher.hash(new.password)
            rider = await self._store.create(new, password_hash=password_hash)
        except (RiderError, HasherBusyError) as exc:
            await abort_with(context, exc, ERRORS)
        return rider_to_proto(rider)

    async def GetRider(
        self, request: rider_pb2.GetRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        try:
            rider = await self._store.get(request.rider_id)
        except RiderError as exc:
            await abort_with(context, exc, ERRORS)
        return rider_to_proto(rider)

    async def UpdateRider(
        self, request: rider_pb2.UpdateRiderRequest, context: Context
    ) -> rider_pb2.Rider:
        try:
            changes = domain.rider_changes(
                name=request.name if request.HasField("name") else None,
                email=request.email if request.HasField("email") else None,
            )
            rider = await self._store.update(request.rider_id, changes)
        except RiderError as exc:
            await abort_with(context, exc, ERRORS)
        return rider_to_proto(rider)

    async def Authenticate(
        self, request: rider_pb2.AuthenticateRequest, context: Context
    ) -> rider_pb2.AuthenticateResponse:
        # Login attempt limits (per phone, per client) go here, before any KDF work.
        try:
            account_id = await self._hasher.authenticate(
                await self._store.password_hash(request.phone), request.password
            )
        except HasherBusyError as exc:
            await abort_with(context, exc, ERRORS)
        if account_id is None:
            await abort_with(context, BadCredentialsError("wrong phone number or password"), ERRORS)
        return rider_pb2.AuthenticateResponse(rider_id=account_id)

    async def ListTrips(
        self, request: rider_pb2.ListTripsRequest, context: Context
    ) -> rider_pb2.ListTripsResponse:
        try:
            page = domain.trips_page(
                request.rider_id, size=request.page_size, token=request.page_token
            )
            await self._store.get(request.rider_id)  # NOT_FOUND for an unknown rider
            trips = await self._store.list_trips(request.rider_id, page)
        except RiderError as exc:
            await abort_with(context, exc, ERRORS)
        return rider_pb2.ListTripsResponse(
            trips=[trip_to_proto(t) for t in trips[: page.limit]],
            next_page_token=page.next_token(request.rider_id, trips),
        )
