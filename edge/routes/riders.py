"""The rider's own routes: fare estimates, history, notifications."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query

from edge import convert
from edge.deps import Ctx, Rider, RiderOrDriver
from edge.errors import ApiError
from edge.models import (
    NO_NUL,
    FareEstimateIn,
    NotificationsOut,
    QuoteOut,
    TripSummariesOut,
    TripSummaryOut,
)
from edge.routes.common import ERRORS
from protos.notification.v1 import notification_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import trip_pb2

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["rider"], responses=ERRORS)

# Trips the first page of a rider's history asks the trip service for: more than a rider
# books within the history's lag (~150 ms).
FRESH_TRIPS = 5

PageSize = Annotated[
    int, Query(ge=0, le=100, description="Items per page, at most 100; 0 = the default.")
]
PageToken = Annotated[
    str,
    Query(
        max_length=500,
        pattern=NO_NUL,
        description="next_page_token of the previous page, as it was; empty for the first page.",
    ),
]


@router.post("/fare-estimates", status_code=201, response_model=QuoteOut)
async def fare_estimate(body: FareEstimateIn, rider: Rider, ctx: Ctx) -> QuoteOut:
    """An upfront quote; book it with POST /v1/trips before it expires."""
    quote = await ctx.trip.EstimateFare(
        trip_pb2.EstimateFareRequest(
            pickup=convert.to_latlng(body.pickup),
            dropoff=convert.to_latlng(body.dropoff),
            vehicle_class=convert.VEHICLE_CLASSES[body.vehicle_class],
            rider_id=rider.sub,
        ),
    )
    return convert.quote_out(quote)


@router.get(
    "/me/trips",
    response_model=TripSummariesOut,
    description=(
        "The caller's trips, newest first: a rider's own trips, or the trips a driver was "
        "assigned. One shape for both roles.\n\n"
        "Read-your-writes: a rider's history is a read model that follows the trip service "
        "by about 150 ms, so the first page (no page_token) also asks the trip service for "
        "the rider's newest trips and shows them as they are now: a trip booked a moment ago "
        "is on top (the first page may then hold a few more than page_size), and a trip just "
        "cancelled says cancelled. Later pages come from the history alone.\n\n"
        "Paging: pass next_page_token as page_token until it is null; page_size 0 means the "
        "service's default."
    ),
)
async def my_trips(
    user: RiderOrDriver, ctx: Ctx, page_size: PageSize = 20, page_token: PageToken = ""
) -> TripSummariesOut:
    if user.role == "driver":
        trips = await ctx.trip.ListTrips(
            trip_pb2.ListTripsRequest(
                driver_id=user.sub, page_size=page_size, page_token=page_token
            ),
        )
        return TripSummariesOut(
            trips=[convert.trip_summary_of_trip(t) for t in trips.trips],
            next_page_token=trips.next_page_token or None,
        )
    fresh = asyncio.ensure_future(_newest_trips(ctx, user.sub)) if not page_token else None
    try:
        reply = await ctx.rider.ListTrips(
            rider_pb2.ListTripsRequest(
                rider_id=user.sub, page_size=page_size, page_token=page_token
            ),
        )
    except BaseException:
        if fresh is not None:
            fresh.cancel()
        raise
    history = [convert.trip_summary_out(t) for t in reply.trips]
    if fresh is not None:
        history = convert.merge_fresh(history, await fresh)
    return TripSummariesOut(trips=history, next_page_token=reply.next_page_token or None)


async def _newest_trips(ctx: Ctx, rider_id: str) -> list[TripSummaryOut]:
    """The rider's newest trips from the trip service; none when it cannot answer now (the
    history alone is still a useful answer)."""
    try:
        reply = await ctx.trip.ListTrips(
            trip_pb2.ListTripsRequest(rider_id=rider_id, page_size=FRESH_TRIPS)
        )
    except ApiError as exc:
        logger.warning("newest trips of %s not merged into the history: %s", rider_id, exc.message)
        return []
    return [convert.trip_summary_of_trip(t) for t in reply.trips]


@router.get("/me/notifications", response_model=NotificationsOut)
async def my_notifications(
    user: RiderOrDriver,
    ctx: Ctx,
    page_size: PageSize = 20,
    page_token: PageToken = "",
    unread_only: Annotated[
        bool, Query(description="true: only notifications not read yet.")
    ] = False,
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
