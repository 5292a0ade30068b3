"""The JSON shapes of the HTTP API (and of the WebSocket ``trip`` frames): pydantic models,
so /openapi.json describes exactly what the routes accept and return.

Request bodies are strict: a number is a JSON number (``true`` and ``"5"`` are not), an
integer is an integer (``2.0`` is not), a string is a string. Lax coercion read
``{"lat": true}`` as 1.0; the schema always said ``number``, and now the validation agrees."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "NO_NUL",
    "AddVehicleIn",
    "CancelIn",
    "CompleteIn",
    "DriverOut",
    "DriverPositionOut",
    "DriverSignupIn",
    "DriversInAreaOut",
    "FareEstimateIn",
    "GoOnlineIn",
    "LatLng",
    "Money",
    "NotificationOut",
    "NotificationsOut",
    "OfferIn",
    "OfferOut",
    "PositionIn",
    "PositionResultOut",
    "QuoteOut",
    "RatingIn",
    "RiderOut",
    "RiderSignupIn",
    "TokenIn",
    "TokenOut",
    "TransitionOut",
    "TripIn",
    "TripOut",
    "TripSummariesOut",
    "TripSummaryOut",
    "TripsOut",
    "VehicleOut",
]

VehicleClassName = Literal["standard", "xl", "comfort"]
TripStateName = Literal[
    "requested",
    "dispatching",
    "accepted",
    "arrived",
    "in_progress",
    "completed",
    "cancelled",
    "no_drivers",
]
ActorName = Literal["rider", "driver", "system", "admin"]
ChargeBasisName = Literal["metered", "quote"]
FareRuleName = Literal["within_band", "above_band", "below_band", "no_measurement", "driver_silent"]
MeasureSourceName = Literal["location_track", "server_clock", "none"]
AvailabilityName = Literal["available", "offered", "on_trip", "offline", "unknown"]
DriverStatusName = Literal["offline", "available", "on_trip", "unknown"]

# Strict here as well as in _In: LatLng is nested in request bodies, and a model's strictness
# does not reach into the models it holds.
Lat = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, strict=True)]
Lng = Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False, strict=True)]
# PostgreSQL text cannot hold NUL: every text input refuses it here (422), not in a service.
NO_NUL = r"^[^\x00]*$"
INT64_MAX = 2**63 - 1  # the proto field's range: a larger number cannot even be sent on
Phone = Annotated[
    str, Field(min_length=3, max_length=20, pattern=NO_NUL, examples=["+4915112345678"])
]
Password = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
Id = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LatLng(BaseModel):
    lat: Lat
    lng: Lng


class Money(BaseModel):
    amount_minor: int = Field(description="Amount in minor units (cents).")
    currency: str


# -- auth ------------------------------------------------------------------------------------


class RiderSignupIn(_In):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]
    phone: Phone
    password: Password
    email: Annotated[str | None, Field(max_length=254, pattern=NO_NUL)] = None


class DriverSignupIn(_In):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]
    phone: Phone
    password: Password
    license_number: Annotated[str, Field(min_length=1, max_length=50, pattern=NO_NUL)]


class TokenIn(_In):
    phone: Phone
    password: Password
    role: Literal["rider", "driver"]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user_id: str
    role: Literal["rider", "driver", "admin"]


class RiderOut(BaseModel):
    id: str
    name: str
    phone: str
    email: str | None
    rating_avg: float
    rating_count: int
    created_at: datetime | None


class VehicleOut(BaseModel):
    id: str
    make: str
    model: str
    plate: str
    seats: int
    vehicle_class: VehicleClassName | None


class DriverOut(BaseModel):
    id: str
    name: str
    phone: str
    license_number: str
    status: DriverStatusName
    active_vehicle_id: str | None
    current_trip_id: str | None
    vehicles: list[VehicleOut]
    rating_avg: float
    rating_count: int
    created_at: datetime | None


# -- driver ----------------------------------------------------------------------------------


class AddVehicleIn(_In):
    make: Annotated[str, Field(min_length=1, max_length=50, pattern=NO_NUL)]
    model: Annotated[str, Field(min_length=1, max_length=50, pattern=NO_NUL)]
    plate: Annotated[str, Field(min_length=1, max_length=20, pattern=NO_NUL)]
    seats: Annotated[int, Field(ge=1, le=8)]
    vehicle_class: VehicleClassName


class GoOnlineIn(_In):
    vehicle_id: Id | None = Field(
        default=None, description="The vehicle to drive; default: the driver's newest vehicle."
    )


class PositionIn(_In):
    lat: Lat
    lng: Lng
    heading: Annotated[float, Field(ge=0.0, lt=360.0, allow_inf_nan=False)] = 0.0
    speed_mps: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    accuracy_m: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    ts_ms: Annotated[
        int | None, Field(ge=0, le=INT64_MAX, description="Fix time, ms since the epoch")
    ] = None


class PositionResultOut(BaseModel):
    accepted: bool
    reason: str | None
    server_ts_ms: int


class OfferIn(_In):
    offer_id: Id | None = Field(
        default=None, description="The offer answered; default: the trip's current offer."
    )


class CompleteIn(_In):
    """What the driver's app measured. Accepted for compatibility with existing apps and
    recorded on the trip's settlement as reported; the fare is never priced from it."""

    distance_m: Annotated[
        int | None,
        Field(ge=0, le=10_000_000, description="Reported distance: recorded, never priced."),
    ] = None
    duration_s: Annotated[
        int | None,
        Field(ge=0, le=7 * 24 * 3600, description="Reported duration: recorded, never priced."),
    ] = None


# -- rider -----------------------------------------------------------------------------------


class FareEstimateIn(_In):
    pickup: LatLng
    dropoff: LatLng
    vehicle_class: VehicleClassName = "standard"


class QuoteOut(BaseModel):
    quote_id: str
    pickup: LatLng
    dropoff: LatLng
    vehicle_class: VehicleClassName | None
    price: Money
    surge_multiplier: float
    distance_m: int
    duration_s: int
    created_at: datetime | None
    expires_at: datetime | None


class TripIn(_In):
    quote_id: Id
    pickup: LatLng
    dropoff: LatLng
    pickup_address: Annotated[str | None, Field(max_length=300, pattern=NO_NUL)] = None
    dropoff_address: Annotated[str | None, Field(max_length=300, pattern=NO_NUL)] = None


class CancelIn(_In):
    reason: Annotated[str, Field(max_length=500, pattern=NO_NUL)] = ""


class RatingIn(_In):
    stars: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=500, pattern=NO_NUL)] = ""


class OfferOut(BaseModel):
    offer_id: str
    driver_id: str
    attempt: int
    offered_at: datetime | None
    expires_at: datetime | None


class TransitionOut(BaseModel):
    from_state: TripStateName | None
    to_state: TripStateName | None
    actor: ActorName | None
    actor_id: str | None
    command: str
    reason: str
    version: int
    at: datetime | None


class FareSettlementOut(BaseModel):
    """How a final fare was settled: the quote, what the service measured itself and from
    where, the rule applied and whether the ride was flagged for review. The driver's
    reported figures are shown as recorded; they are never priced."""

    rule: FareRuleName | None = Field(
        description=(
            "within_band: the measured price was charged; above_band: the quote was charged "
            "and the ride flagged; below_band: the band's floor was charged and the ride "
            "flagged; no_measurement: the quote (no track); driver_silent: the quote (the "
            "service ended the ride)."
        )
    )
    flagged_for_review: bool
    quoted_fare: Money | None
    quoted_distance_m: int
    quoted_duration_s: int
    measured_distance_m: int | None
    distance_source: MeasureSourceName | None
    measured_duration_s: int
    duration_source: MeasureSourceName | None
    track_points: int
    track_points_ignored: int
    measured_fare: Money | None = Field(
        description="The tariff's price of the measured distance and duration."
    )
    band_low: Money | None
    band_high: Money | None
    reported_distance_m: int | None
    reported_duration_s: int | None


class TripOut(BaseModel):
    id: str
    rider_id: str
    driver_id: str | None
    vehicle_class: VehicleClassName | None
    state: TripStateName | None
    version: int
    quote_id: str
    pickup: LatLng
    dropoff: LatLng
    pickup_address: str | None
    dropoff_address: str | None
    quoted_fare: Money | None
    final_fare: Money | None
    surge_multiplier: float
    cancellation_fee: Money | None
    distance_m: int
    duration_s: int
    cancelled_by: ActorName | None
    cancel_reason: str | None
    current_offer: OfferOut | None
    current_offers: list[OfferOut] = Field(
        default_factory=list,
        description="Every pending offer (parallel offers); current_offer is the first. A "
        "driver sees only their own; riders see none.",
    )
    rider_rating: int | None
    driver_rating: int | None
    requested_at: datetime | None
    accepted_at: datetime | None
    arrived_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    ended_at: datetime | None
    history: list[TransitionOut]
    flagged_at: datetime | None = None
    """When the service flagged the ride for an operator (its driver's app fell silent, or its
    fare was settled outside the band around the quote: see settlement)."""
    flag_reason: str | None = None
    charge_basis: ChargeBasisName | None = None
    """What final_fare was priced from: metered, or the quote."""
    settlement: FareSettlementOut | None = None
    """The basis of final_fare; null until the ride ends."""


class TripsOut(BaseModel):
    trips: list[TripOut]
    next_page_token: str | None


class TripSummaryOut(BaseModel):
    """One trip in a list: the same shape for riders and drivers."""

    id: str = Field(description="The trip's id; GET /v1/trips/{id} has the whole trip.")
    state: TripStateName | None
    pickup: LatLng
    dropoff: LatLng
    fare: Money | None = Field(
        description=(
            "What the trip costs the rider: the quoted price while it is live, the final fare "
            "once completed, the cancellation fee of a cancelled trip; null when nothing is "
            "charged (cancelled without a fee, or no driver found)."
        )
    )
    driver_id: str | None = Field(description="The driver who took the trip; null if none did.")
    vehicle_class: VehicleClassName | None
    requested_at: datetime | None
    completed_at: datetime | None = Field(description="Set when state is completed.")
    ended_at: datetime | None = Field(
        description="When the trip ended without completing (cancelled or no_drivers)."
    )


class TripSummariesOut(BaseModel):
    trips: list[TripSummaryOut] = Field(description="Newest first.")
    next_page_token: str | None = Field(
        description="Pass as page_token for the next page; null on the last page."
    )


class NotificationOut(BaseModel):
    id: str
    kind: str
    title: str
    body: str
    data: dict[str, str]
    trip_id: str | None
    created_at: datetime | None
    read_at: datetime | None


class NotificationsOut(BaseModel):
    notifications: list[NotificationOut]
    next_page_token: str | None


# -- payments --------------------------------------------------------------------------------


class PaymentMethodIn(_In):
    payment_method_id: Annotated[
        str,
        Field(
            min_length=4,
            max_length=120,
            pattern=r"^pm_[A-Za-z0-9]+$",
            description=(
                "The provider's payment-method id the app got when it tokenized the card with "
                "the provider's SDK (Stripe: pm_...). Never a card number."
            ),
        ),
    ]
    default: bool = Field(False, description="Make it the default even when there is one.")


class PaymentMethodOut(BaseModel):
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    default: bool = Field(description="The method charged for trips.")
    created_at: datetime | None


class PaymentMethodsOut(BaseModel):
    payment_methods: list[PaymentMethodOut] = Field(description="The default first.")


PaymentKindName = Literal["fare", "cancellation_fee"]
PaymentStatusName = Literal["pending", "charging", "succeeded", "outstanding"]


class RefundOut(BaseModel):
    id: str
    amount: Money
    reason: str
    pending: bool = Field(description="Recorded; the provider's answer is not in yet.")
    created_at: datetime | None


class PaymentOut(BaseModel):
    id: str
    trip_id: str
    kind: PaymentKindName | None
    status: PaymentStatusName | None = Field(
        description=(
            "pending and charging: on its way; succeeded: paid; outstanding: every attempt "
            "failed, and the rider cannot book until a new payment method settles it."
        )
    )
    amount: Money
    card_last4: str | None
    attempts: int
    failure: str | None = Field(description="Why the last attempt failed (card_declined, ...).")
    refunded: Money
    refunds: list[RefundOut]
    created_at: datetime | None


class PaymentsOut(BaseModel):
    payments: list[PaymentOut]


class CurrencyTakingsOut(BaseModel):
    currency: str
    charges: int = Field(description="Succeeded charges.")
    charged_minor: int
    refunded_minor: int
    net_minor: int = Field(description="Charged minus refunded.")
    outstanding_charges: int = Field(description="Charges that failed every attempt.")
    outstanding_minor: int


class TakingsOut(BaseModel):
    currencies: list[CurrencyTakingsOut]


class RefundIn(_In):
    amount_minor: int = Field(
        0, ge=0, le=10**12, description="Minor units; 0 refunds all that is left."
    )
    reason: Annotated[str, Field(max_length=500, pattern=NO_NUL)] = ""


# -- admin -----------------------------------------------------------------------------------


class DriverPositionOut(BaseModel):
    driver_id: str
    lat: float
    lng: float
    heading: float
    speed_mps: float
    client_ts_ms: int
    server_ts_ms: int
    availability: AvailabilityName
    vehicle_class: VehicleClassName | None


class DriversInAreaOut(BaseModel):
    drivers: list[DriverPositionOut]
    truncated: bool


class DispatchCandidateOut(BaseModel):
    """One driver a dispatch round saw for a trip."""

    driver_id: str
    distance_m: float = Field(description="Straight line to the pickup; -1 when not searched.")
    pickup_s: float = Field(description="Estimated pickup time: distance x road factor / speed.")
    cost: float
    reason: str = Field(
        description="assigned, costlier, offered_elsewhere, declined_before, wrong_class, "
        "stale_position, outside_limit or busy."
    )


class DispatchOfferOut(BaseModel):
    driver_id: str
    offer_id: str
    outcome: str = Field(
        description="pending, accepted, accepted_elsewhere, declined, expired, trip_cancelled, "
        "driver_offline or trip_ended."
    )


class DispatchRoundOut(BaseModel):
    """One dispatch round of a trip (TripService/ExplainDispatch)."""

    round: int
    at: datetime | None
    policy: str = Field(description="batch, nearest or nearest_fallback.")
    window_trips: int
    candidates: list[DispatchCandidateOut]
    excluded: list[DispatchCandidateOut]
    offers: list[DispatchOfferOut]
    outcome: str = Field(
        description="pending, accepted, declined, expired, trip_cancelled, driver_offline, "
        "trip_ended or no_drivers."
    )
    detail: str


class DispatchExplainedOut(BaseModel):
    trip_id: str
    state: str
    rounds: list[DispatchRoundOut]
