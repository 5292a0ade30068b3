"""Trips: booking and reading (riders), the driver's commands, cancel and rating (both)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path
from fastapi.responses import JSONResponse

from edge import convert
from edge.auth import Principal
from edge.deps import AnyUser, Ctx, Driver, Rider, RiderOrDriver
from edge.errors import ApiError
from edge.idempotency import StoredResponse
from edge.models import NO_NUL, CancelIn, CompleteIn, OfferIn, RatingIn, TripIn, TripOut
from edge.routes.common import ERRORS
from edge.routes.payments import check_may_book
from protos.trip.v1 import trip_pb2

router = APIRouter(prefix="/v1/trips", tags=["trips"], responses=ERRORS)

TripId = Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)]
_ACTORS = {
    "rider": trip_pb2.ACTOR_RIDER,
    "driver": trip_pb2.ACTOR_DRIVER,
    "admin": trip_pb2.ACTOR_ADMIN,
}


def _out(trip: trip_pb2.Trip, user: Principal) -> TripOut:
    driver = user.sub if user.role == "driver" else None
    return convert.trip_out(trip, show_offer=user.role != "rider", driver=driver)


async def _get_visible(ctx: Ctx, trip_id: str, user: Principal) -> trip_pb2.Trip:
    """The trip if ``user`` may see it. The trip service decides who may: to anyone else it
    answers NOT_FOUND exactly as for a trip that does not exist, so the 404 is the same too."""
    return await ctx.trip.GetTrip(
        trip_pb2.GetTripRequest(trip_id=trip_id, actor=_ACTORS[user.role], actor_id=user.sub)
    )


@router.post("", status_code=201, response_model=TripOut)
async def request_trip(
    body: TripIn,
    rider: Rider,
    ctx: Ctx,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Same key + same body returns the first response; another body is 422.",
        ),
    ] = None,
) -> JSONResponse:
    """Book a trip at a quote's price; dispatch starts at once. 409
    ``payment_method_required`` without a payment method, ``payment_outstanding`` while a
    charge is outstanding."""

    async def create() -> StoredResponse:
        await check_may_book(ctx, rider.sub)
        request = trip_pb2.RequestTripRequest(
            rider_id=rider.sub,
            quote_id=body.quote_id,
            pickup=convert.to_latlng(body.pickup),
            dropoff=convert.to_latlng(body.dropoff),
        )
        if body.pickup_address is not None:
            request.pickup_address = body.pickup_address
        if body.dropoff_address is not None:
            request.dropoff_address = body.dropoff_address
        trip = await ctx.trip.RequestTrip(request)
        return StoredResponse(201, _out(trip, rider).model_dump(mode="json"))

    if idempotency_key is None:
        response = await create()
    else:
        response = await ctx.idempotency.run(
            scope=rider.sub, key=idempotency_key, body=body.model_dump(mode="json"), create=create
        )
    headers = {"Idempotent-Replayed": "true"} if response.replayed else None
    return JSONResponse(response.body, status_code=response.status, headers=headers)


@router.get("/{trip_id}", response_model=TripOut)
async def get_trip(trip_id: TripId, user: AnyUser, ctx: Ctx) -> TripOut:
    """One trip with its history: a rider's own, a driver's assigned or offered, any for admin."""
    return _out(await _get_visible(ctx, trip_id, user), user)


@router.post("/{trip_id}/cancel", response_model=TripOut)
async def cancel_trip(
    trip_id: TripId, user: AnyUser, ctx: Ctx, body: Annotated[CancelIn | None, Body()] = None
) -> TripOut:
    """Cancel as the rider, the assigned driver (re-dispatches) or an admin."""
    trip = await ctx.trip.CancelTrip(
        trip_pb2.CancelTripRequest(
            trip_id=trip_id,
            actor=_ACTORS[user.role],
            actor_id=user.sub,
            reason=body.reason if body else "",
        ),
    )
    return _out(trip, user)


@router.post("/{trip_id}/rating", response_model=TripOut)
async def rate_trip(trip_id: TripId, body: RatingIn, user: RiderOrDriver, ctx: Ctx) -> TripOut:
    """Rate the other party of a completed trip, once per side."""
    trip = await ctx.trip.RateTrip(
        trip_pb2.RateTripRequest(
            trip_id=trip_id,
            actor=_ACTORS[user.role],
            actor_id=user.sub,
            stars=body.stars,
            comment=body.comment,
        ),
    )
    return _out(trip, user)


async def _offer_id(ctx: Ctx, trip_id: str, driver: Principal, body: OfferIn | None) -> str:
    if body is not None and body.offer_id:
        return body.offer_id
    trip = await _get_visible(ctx, trip_id, driver)
    for offer in trip.current_offers:
        if offer.driver_id == driver.sub:
            return offer.offer_id
    raise ApiError(409, "failed_precondition", "no pending offer of this trip for you")


@router.post("/{trip_id}/accept", response_model=TripOut)
async def accept_trip(
    trip_id: TripId, driver: Driver, ctx: Ctx, body: Annotated[OfferIn | None, Body()] = None
) -> TripOut:
    """Accept the pending offer (the offer id from the WebSocket offer frame)."""
    offer_id = await _offer_id(ctx, trip_id, driver, body)
    trip = await ctx.trip.AcceptTrip(
        trip_pb2.AcceptTripRequest(trip_id=trip_id, driver_id=driver.sub, offer_id=offer_id),
    )
    return _out(trip, driver)


@router.post("/{trip_id}/decline", status_code=204)
async def decline_trip(
    trip_id: TripId, driver: Driver, ctx: Ctx, body: Annotated[OfferIn | None, Body()] = None
) -> None:
    """Decline the pending offer; dispatch moves on."""
    offer_id = await _offer_id(ctx, trip_id, driver, body)
    await ctx.trip.DeclineTrip(
        trip_pb2.DeclineTripRequest(trip_id=trip_id, driver_id=driver.sub, offer_id=offer_id),
    )


@router.post("/{trip_id}/arrive", response_model=TripOut)
async def arrive(trip_id: TripId, driver: Driver, ctx: Ctx) -> TripOut:
    """The assigned driver is at the pickup."""
    trip = await ctx.trip.ArriveAtPickup(
        trip_pb2.ArriveAtPickupRequest(trip_id=trip_id, driver_id=driver.sub),
    )
    return _out(trip, driver)


@router.post("/{trip_id}/start", response_model=TripOut)
async def start(trip_id: TripId, driver: Driver, ctx: Ctx) -> TripOut:
    """The rider is on board."""
    trip = await ctx.trip.StartTrip(
        trip_pb2.StartTripRequest(trip_id=trip_id, driver_id=driver.sub),
    )
    return _out(trip, driver)


@router.post("/{trip_id}/complete", response_model=TripOut)
async def complete(
    trip_id: TripId, driver: Driver, ctx: Ctx, body: Annotated[CompleteIn | None, Body()] = None
) -> TripOut:
    """End the ride. The trip service settles the fare from what it measured itself (the
    recorded track, its clock): the quote, or within a band around it. A reported distance
    or duration in the body is recorded on the settlement, never priced."""
    request = trip_pb2.CompleteTripRequest(trip_id=trip_id, driver_id=driver.sub)
    if body is not None and body.distance_m is not None:
        request.distance_m = body.distance_m
    if body is not None and body.duration_s is not None:
        request.duration_s = body.duration_s
    trip = await ctx.trip.CompleteTrip(request)
    return _out(trip, driver)
