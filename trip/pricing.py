"""Prices and the geometry they need: pure arithmetic, no I/O.

Money is integer minor units everywhere. A fare is computed exactly (``Fraction``) and rounded
once, half up, to the minor unit: 802.5 cents is 803, never 802 as ``round()`` (half to even)
would give. Surge multipliers are decimals with one digit (1.0, 1.3, ... 3.0), so they are
taken through their decimal text rather than their binary float value.

The value types every other module uses (``LatLng``, ``Money``, ``VehicleClass``) live here,
at the bottom of the import graph, so ``domain`` can price a trip without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType

import h3

from trip.errors import InvalidArgumentError

__all__ = [
    "CITY_SPEED_MPS",
    "DEFAULT_FARE_BAND",
    "DETOUR_FACTOR",
    "EARTH_RADIUS_M",
    "H3_RESOLUTION",
    "SURGE_CAP",
    "TARIFFS",
    "FareBand",
    "FareRule",
    "FareSettlement",
    "LatLng",
    "MeasureSource",
    "Money",
    "Tariff",
    "TrackMeasurement",
    "VehicleClass",
    "estimate_route",
    "haversine_m",
    "pickup_cell",
    "quote_price",
    "quote_settlement",
    "ring",
    "settle_fare",
    "surge_multiplier",
]

EARTH_RADIUS_M = 6_371_008.8
"""Mean earth radius (IUGG), the usual choice for great-circle distances."""

DETOUR_FACTOR = 1.3
"""Road distance / great-circle distance, a typical value for a city grid."""

CITY_SPEED_MPS = 8.3
"""Average city driving speed, about 30 km/h, for duration estimates."""

H3_RESOLUTION = 8
"""H3 cells of about 0.74 km^2 (edge ~460 m): a few minutes' drive across."""

SURGE_CAP = 3.0


class VehicleClass(StrEnum):
    """The vehicle class a rider asks for; a rider is matched only with that class."""

    STANDARD = "STANDARD"
    XL = "XL"
    COMFORT = "COMFORT"


@dataclass(frozen=True, slots=True)
class LatLng:
    """A WGS 84 point in decimal degrees; out-of-range or non-finite values are rejected."""

    lat: float
    lng: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise InvalidArgumentError(f"latitude {self.lat!r} is not in [-90, 90]")
        if not (math.isfinite(self.lng) and -180.0 <= self.lng <= 180.0):
            raise InvalidArgumentError(f"longitude {self.lng!r} is not in [-180, 180]")


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units (cents) of an ISO 4217 currency; never negative."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True cents is a bug, not an amount.
        if type(self.amount_minor) is not int or self.amount_minor < 0:
            raise InvalidArgumentError(
                f"amount {self.amount_minor!r} is not a non-negative integer of minor units"
            )
        if not (len(self.currency) == 3 and self.currency.isascii() and self.currency.isupper()):
            raise InvalidArgumentError(f"currency {self.currency!r} is not an ISO 4217 code")


@dataclass(frozen=True, slots=True)
class Tariff:
    """One vehicle class's prices, all in minor units of ``currency``."""

    currency: str
    base: int
    per_km: int
    per_minute: int
    minimum_fare: int
    cancellation_fee: int


TARIFFS: Mapping[VehicleClass, Tariff] = MappingProxyType(
    {
        VehicleClass.STANDARD: Tariff("EUR", 250, 110, 25, 600, 500),
        VehicleClass.COMFORT: Tariff("EUR", 350, 140, 30, 800, 600),
        VehicleClass.XL: Tariff("EUR", 400, 160, 35, 900, 700),
    }
)
"""The default tariff per class (EUR cents)."""


def haversine_m(a: LatLng, b: LatLng) -> float:
    """Great-circle distance between two points in metres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlng = math.radians(b.lng - a.lng)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    # min() guards asin against h creeping past 1.0 by rounding for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def estimate_route(
    pickup: LatLng,
    dropoff: LatLng,
    *,
    detour: float = DETOUR_FACTOR,
    speed_mps: float = CITY_SPEED_MPS,
) -> tuple[int, int]:
    """Estimated road ``(distance_m, duration_s)``: great circle x detour, at city speed.

    Both are rounded half up to whole metres and seconds.
    """
    distance = haversine_m(pickup, dropoff) * detour
    return _round_half_up(distance), _round_half_up(distance / speed_mps)


def quote_price(distance_m: int, duration_s: int, tariff: Tariff, surge: float) -> Money:
    """The fare for a ride: (base + per km + per minute) x surge, at least the minimum fare.

    Computed exactly and rounded once, half up, to the minor unit. The minimum fare floors
    the surged total (surge does not multiply the minimum).
    """
    if distance_m < 0 or duration_s < 0:
        raise InvalidArgumentError(
            f"distance {distance_m} m and duration {duration_s} s must not be negative"
        )
    if not (math.isfinite(surge) and surge >= 1.0):
        raise InvalidArgumentError(f"surge multiplier {surge!r} is not a number >= 1.0")
    metered = (
        tariff.base
        + Fraction(tariff.per_km * distance_m, 1000)
        + Fraction(tariff.per_minute * duration_s, 60)
    )
    # Decimal(str(x)) reads 1.1 as 11/10, not as the binary float just above it.
    surged = metered * Fraction(Decimal(str(surge)))
    return Money(max(tariff.minimum_fare, _round_half_up(surged)), tariff.currency)


# --- the final fare: upfront prices that hold ----------------------------------------------


class FareRule(StrEnum):
    """The rule that settled a final fare; the value is what the store writes."""

    WITHIN_BAND = "WITHIN_BAND"
    """The measured price lay within the band around the quote: it is charged."""
    ABOVE_BAND = "ABOVE_BAND"
    """The measured price lay above the band: the quote is charged, the ride flagged."""
    BELOW_BAND = "BELOW_BAND"
    """The measured price lay below the band: the band's floor is charged, the ride flagged."""
    NO_MEASUREMENT = "NO_MEASUREMENT"
    """No measured distance (no track, or the location service did not answer): the quote."""
    DRIVER_SILENT = "DRIVER_SILENT"
    """The system ended a ride whose driver fell silent: the quote."""


class MeasureSource(StrEnum):
    """Where a measured figure of a settlement came from."""

    LOCATION_TRACK = "LOCATION_TRACK"
    """The positions the location service recorded for the trip, filtered there."""
    SERVER_CLOCK = "SERVER_CLOCK"
    """The trip service's clock, from the ride's start to its end."""
    NONE = "NONE"


@dataclass(frozen=True, slots=True)
class FareBand:
    """How far a final fare may move from the quote without an operator's review.

    ``up`` is small: the rider was promised the quote, and an honest ride differs from the
    estimate by traffic and route choice, which a tenth covers; a measured price beyond it is
    a long detour or a track that lies, and goes to review while the rider pays the quote.
    ``down`` is wider because a lower fare only ever favours the rider (a ride ended early),
    yet bounded, so a track that lost fixes cannot take more than that from the driver
    before someone looks.
    """

    up: float = 0.10
    down: float = 0.20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.up) and 0.0 <= self.up <= 1.0):
            raise InvalidArgumentError(f"fare band up {self.up!r} is not in [0, 1]")
        if not (math.isfinite(self.down) and 0.0 <= self.down <= 1.0):
            raise InvalidArgumentError(f"fare band down {self.down!r} is not in [0, 1]")

    def edges(self, quoted: Money) -> tuple[Money, Money]:
        """The lowest and the highest fare charged without a review, rounded half up."""
        low = quoted.amount_minor * (1 - Fraction(Decimal(str(self.down))))
        high = quoted.amount_minor * (1 + Fraction(Decimal(str(self.up))))
        return Money(_round_half_up(low), quoted.currency), Money(
            _round_half_up(high), quoted.currency
        )


DEFAULT_FARE_BAND = FareBand()


@dataclass(frozen=True, slots=True)
class TrackMeasurement:
    """The distance the location service measured along a ride's recorded track."""

    distance_m: int
    points: int
    points_ignored: int = 0

    def __post_init__(self) -> None:
        if self.distance_m < 0 or self.points < 0 or self.points_ignored < 0:
            raise InvalidArgumentError(f"track measurement {self} has a negative figure")


@dataclass(frozen=True, slots=True)
class FareSettlement:
    """The basis of a final fare: the quote, what was measured and from where, the rule
    applied, and whether the ride needs a review. Recorded on the trip as it was settled."""

    rule: FareRule
    charged: Money
    flagged: bool
    quoted: Money
    quoted_distance_m: int
    quoted_duration_s: int
    measured_duration_s: int
    duration_source: MeasureSource
    band_low: Money
    band_high: Money
    measured_distance_m: int | None = None
    distance_source: MeasureSource = MeasureSource.NONE
    track_points: int = 0
    track_points_ignored: int = 0
    measured_fare: Money | None = None
    reported_distance_m: int | None = None
    """What the driver's app said it drove: recorded, never priced."""
    reported_duration_s: int | None = None
    """What the driver's app said the ride took: recorded, never priced."""


def settle_fare(
    *,
    quoted: Money,
    quoted_distance_m: int,
    quoted_duration_s: int,
    duration_s: int,
    track: TrackMeasurement | None,
    tariff: Tariff,
    surge: float,
    band: FareBand = DEFAULT_FARE_BAND,
    reported_distance_m: int | None = None,
    reported_duration_s: int | None = None,
) -> FareSettlement:
    """The final fare of a ride the driver ended, from the service's own measurements.

    ``duration_s`` is the service's clock from the start to now; ``track`` what the location
    service measured (None when it could not say). The measured price is the quote's formula
    on those (the quoted surge, never below the minimum fare). Within ``band`` around the
    quote it is charged; above, the quote is charged and the ride flagged; below, the band's
    floor is charged and the ride flagged. Without a track the quote is charged. The driver's
    reported figures are only recorded: nothing here reads them.
    """
    base = quote_settlement(
        quoted=quoted,
        quoted_distance_m=quoted_distance_m,
        quoted_duration_s=quoted_duration_s,
        duration_s=duration_s,
        rule=FareRule.NO_MEASUREMENT,
        band=band,
    )
    base = replace(
        base, reported_distance_m=reported_distance_m, reported_duration_s=reported_duration_s
    )
    if track is None:
        return base
    measured = quote_price(track.distance_m, duration_s, tariff, surge)
    if measured.amount_minor > base.band_high.amount_minor:
        rule, charged = FareRule.ABOVE_BAND, quoted
    elif measured.amount_minor < base.band_low.amount_minor:
        rule, charged = FareRule.BELOW_BAND, base.band_low
    else:
        rule, charged = FareRule.WITHIN_BAND, measured
    return replace(
        base,
        rule=rule,
        charged=charged,
        flagged=rule is not FareRule.WITHIN_BAND,
        measured_distance_m=track.distance_m,
        distance_source=MeasureSource.LOCATION_TRACK,
        track_points=track.points,
        track_points_ignored=track.points_ignored,
        measured_fare=measured,
    )


def quote_settlement(
    *,
    quoted: Money,
    quoted_distance_m: int,
    quoted_duration_s: int,
    duration_s: int,
    rule: FareRule,
    band: FareBand = DEFAULT_FARE_BAND,
) -> FareSettlement:
    """A settlement that charges the quote with nothing measured but the clock (``rule``
    says why, e.g. ``DRIVER_SILENT``)."""
    if duration_s < 0:
        raise InvalidArgumentError(f"duration {duration_s} s is negative")
    low, high = band.edges(quoted)
    return FareSettlement(
        rule=rule,
        charged=quoted,
        flagged=False,
        quoted=quoted,
        quoted_distance_m=quoted_distance_m,
        quoted_duration_s=quoted_duration_s,
        measured_duration_s=duration_s,
        duration_source=MeasureSource.SERVER_CLOCK,
        band_low=low,
        band_high=high,
    )


def surge_multiplier(
    demand: int,
    supply: int,
    previous: float | None,
    *,
    cap: float = SURGE_CAP,
    smoothing: float = 0.5,
) -> float:
    """The surge multiplier of an area from its recent requests and available drivers.

    The raw multiplier is demand / supply (no surge while supply covers demand; demand with no
    supply at all is the cap). It is smoothed with the area's previous multiplier,
    ``smoothing * raw + (1 - smoothing) * previous``, so one burst does not swing prices, then
    clamped to ``[1.0, cap]`` and rounded half up to one decimal.
    Non-decreasing in demand and non-increasing in supply.
    """
    if demand < 0 or supply < 0:
        raise InvalidArgumentError(f"demand {demand} and supply {supply} must not be negative")
    if not 0.0 < smoothing <= 1.0:
        raise InvalidArgumentError(f"smoothing {smoothing!r} is not in (0, 1]")
    if not cap >= 1.0:
        raise InvalidArgumentError(f"surge cap {cap!r} is below 1.0")
    if supply == 0:
        raw = cap if demand > 0 else 1.0
    else:
        raw = min(cap, max(1.0, demand / supply))
    value = raw if previous is None else smoothing * raw + (1.0 - smoothing) * previous
    value = min(cap, max(1.0, value))
    return float(Decimal(str(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def pickup_cell(lat: float, lng: float, resolution: int = H3_RESOLUTION) -> str:
    """The H3 cell (hex string) containing a point: the unit surge is computed over."""
    point = LatLng(lat, lng)
    return str(h3.latlng_to_cell(point.lat, point.lng, resolution))


def ring(cell: str, k: int = 1) -> frozenset[str]:
    """The cells within ``k`` steps of ``cell``, itself included (3k^2 + 3k + 1 of them).

    Supply near a pickup is counted over this disk, so a driver across a cell edge counts.
    """
    if k < 0:
        raise InvalidArgumentError(f"ring size {k} is negative")
    if not h3.is_valid_cell(cell):
        raise InvalidArgumentError(f"{cell!r} is not an H3 cell")
    return frozenset(str(c) for c in h3.grid_disk(cell, k))


def _round_half_up(value: float | Fraction) -> int:
    """Nearest integer to a non-negative value, halves rounded up."""
    return math.floor(Fraction(value) + Fraction(1, 2))
