"""The rider's own routes: fare estimates, history, notifications."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edge import convert
from edge.deps import Ctx, Rider, RiderOrDriver
from edge.models import (
    NO_NUL,
    FareEstimateIn,
    NotificationsOut,
    QuoteOut,
    TripsOut,
    TripSummariesOut,
)
from edge.routes.common import ERRORS
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import trip_pb2

router = APIRouter(prefix="/v1", tags=["rider"], responses=ERRORS)

PageSize = Annotated[int, Query(ge=0, le=100)]
PageToken = Annotated[str, Query(max_length=500, pattern=NO_NUL)]


@router.post("/fare-estimates", status_code=201, response_model=QuoteOut)
async def fare_estimate(body: FareEstimateIn, rider: Rider, ctx: Ctx) -> QuoteOut:
    """An upfront quote; book it with POST /v1/trips before it expires."""
    quote = await ctx.trip.EstimateFare(
        trip_pb2.EstimateFareRequest(
            pickup=convert.to_latlng(body.pickup),
            dropoff=convert.to_latlng(body.dropoff),
            vehicle_class=convert.VEHICLE_CLASSES[body.vehicle_class],  # type: ignore[arg-type]
            rider_id=rider.sub,
        ),
    )
    return convert.quote_out(quote)


@router.get("/me/trips", response_model=TripSummariesOut | TripsOut)
async def my_trips(
    user: RiderOrDriver, ctx: Ctx, page_size: PageSize = 20, page_token: PageToken = ""
) -> TripSummariesOut | TripsOut:
    """The caller's trips, newest first (a rider's history; a driver's assigned trips)."""
    if user.role == "rider":
        reply = await ctx.rider.ListTrips(
            rider_pb2.ListTripsRequest(
                rider_id=user.sub, page_size=page_size, page_token=page_token
            ),
        )
        return TripSummariesOut(
            trips=[convert.trip_summary_out(t) for t in reply.trips],
            next_page_token=reply.next_page_token or None,
        )
    trips = await ctx.trip.ListTrips(
        trip_pb2.ListTripsRequest(driver_id=user.sub, page_size=page_size, page_token=page_token),
    )
    return TripsOut(
        trips=[convert.trip_out(t) for t in trips.trips],
        next_page_token=trips.next_page_token or None,
    )


@router.get("/me/notifications", response_model=NotificationsOut)
async def my_notifications(
    user: RiderOrDriver,
    ctx: Ctx,
    page_size: PageSize = 20,
    page_token: PageToken = "",
    unread_only: bool = False,
) -> NotificationsOut:
    """The caller's notifications, newest first."""
    reply = await ctx.notification.ListNotifications(
        notification_pb2.ListNotificationsRequest(
            user_id=user.sub, page_size=page_size, page_token=page_token, unread_only=unread_only
        ),
    )
    return NotificationsOut(
        notifications=[convert.notification_out(n) for n in reply.notifications],
        next_page_token=reply.next_page_token or None,
    )
