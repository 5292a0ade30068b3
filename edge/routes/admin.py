"""Operator routes: drivers on the map, trips by state, why a trip went to a driver."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

from fastapi import APIRouter, Path, Query

from edge import convert
from edge.deps import Admin, Ctx
from edge.errors import ApiError
from edge.models import (
    NO_NUL,
    DispatchCandidateOut,
    DispatchExplainedOut,
    DispatchOfferOut,
    DispatchRoundOut,
    DriversInAreaOut,
    TripsOut,
)
from edge.routes.common import ERRORS
from protos.location.v1 import location_pb2
from protos.trip.v1 import trip_pb2

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERRORS)

Bbox = Annotated[
    str,
    Query(
        description=(
            "Bounding box: four decimal degrees separated by commas, "
            "minLat,minLng,maxLat,maxLng (the south-west corner, then the north-east one); "
            "latitudes within +-85.05112878, longitudes within +-180, not crossing the "
            "antimeridian."
        ),
        examples=["52.3,13.0,52.7,13.8"],
        max_length=200,
    ),
]


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ApiError(422, "invalid_argument", "bbox must be minLat,minLng,maxLat,maxLng")
    return values[0], values[1], values[2], values[3]


@router.get("/drivers", response_model=DriversInAreaOut)
async def drivers(
    _: Admin,
    ctx: Ctx,
    bbox: Bbox,
    limit: Annotated[
        int, Query(ge=0, le=10_000, description="At most this many drivers; 0 = the default.")
    ] = 0,
) -> DriversInAreaOut:
    """Fresh positions of online drivers inside the box, with their availability."""
    min_lat, min_lng, max_lat, max_lng = parse_bbox(bbox)
    reply = await ctx.location.DriversInArea(
        location_pb2.DriversInAreaRequest(
            min_lat=min_lat, min_lng=min_lng, max_lat=max_lat, max_lng=max_lng, limit=limit
        ),
    )
    return DriversInAreaOut(
        drivers=[convert.position_out(p) for p in reply.drivers], truncated=reply.truncated
    )


@router.get("/trips", response_model=TripsOut)
async def trips(
    _: Admin,
    ctx: Ctx,
    state: Annotated[
        list[str] | None,
        Query(
            description=(
                "Trip states, repeated (state=accepted&state=arrived) or comma-separated "
                "(state=accepted,arrived): requested, dispatching, accepted, arrived, "
                "in_progress, completed, cancelled, no_drivers, or live (the first five). "
                "Default: every state."
            )
        ),
    ] = None,
    page_size: Annotated[
        int, Query(ge=0, le=100, description="Trips per page, at most 100; 0 = the default.")
    ] = 50,
    page_token: Annotated[
        str,
        Query(
            max_length=500,
            pattern=NO_NUL,
            description="next_page_token of the previous page; empty for the first page.",
        ),
    ] = "",
) -> TripsOut:
    """Trips by state, newest first."""
    states = []
    for item in state or ():
        for name in item.split(","):
            name = name.strip().lower()
            if name == "live":
                states += [convert.TRIP_STATES[s] for s in convert.LIVE_STATES]
            elif name in convert.TRIP_STATES:
                states.append(convert.TRIP_STATES[name])
            elif name:
                raise ApiError(422, "invalid_argument", f"unknown trip state {name!r}")
    reply = await ctx.trip.ListTrips(
        trip_pb2.ListTripsRequest(states=states, page_size=page_size, page_token=page_token),  # type: ignore[arg-type]
    )
    return TripsOut(
        trips=[convert.trip_out(t) for t in reply.trips],
        next_page_token=reply.next_page_token or None,
    )


def _candidate_out(c: trip_pb2.DispatchCandidate) -> DispatchCandidateOut:
    return DispatchCandidateOut(
        driver_id=c.driver_id,
        distance_m=c.distance_m,
        pickup_s=c.pickup_s,
        cost=c.cost,
        reason=c.reason,
    )


@router.get("/trips/{trip_id}/dispatch", response_model=DispatchExplainedOut)
async def explain_dispatch(
    _: Admin,
    ctx: Ctx,
    trip_id: Annotated[str, Path(min_length=1, max_length=100, pattern=NO_NUL)],
) -> DispatchExplainedOut:
    """Explain this dispatch: every dispatch round of the trip, oldest first, with the
    drivers considered (distance, estimated pickup time, cost), the ones excluded and why,
    who was offered the trip and how that ended."""
    reply = await ctx.trip.ExplainDispatch(trip_pb2.ExplainDispatchRequest(trip_id=trip_id))
    return DispatchExplainedOut(
        trip_id=reply.trip_id,
        state=convert.state_name(reply.state),
        rounds=[
            DispatchRoundOut(
                round=r.round,
                at=r.at.ToDatetime(tzinfo=UTC) if r.HasField("at") else None,
                policy=r.policy,
                window_trips=r.window_trips,
                candidates=[_candidate_out(c) for c in r.candidates],
                excluded=[_candidate_out(c) for c in r.excluded],
                offers=[
                    DispatchOfferOut(driver_id=o.driver_id, offer_id=o.offer_id, outcome=o.outcome)
                    for o in r.offers
                ],
                outcome=r.outcome,
                detail=r.detail,
            )
            for r in reply.rounds
        ],
    )
