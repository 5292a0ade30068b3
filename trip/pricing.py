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
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType

import h3

from trip.errors import InvalidArgumentError

__all__ = [
    "CITY_SPEED_MPS",
    "DETOUR_FACTOR",
    "EARTH_RADIUS_M",
    "H3_RESOLUTION",
    "SURGE_CAP",
    "TARIFFS",
    "LatLng",
    "Money",
    "Tariff",
    "VehicleClass",
    "estimate_route",
    "final_fare",
    "haversine_m",
    "pickup_cell",
    "quote_price",
    "ring",
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


def final_fare(distance_m: int, duration_s: int, tariff: Tariff, surge: float) -> Money:
    """The fare charged at completion: the quote's formula on the actual distance and time.

    Never below the tariff's minimum fare; the surge is the one the trip was quoted with.
    """
    return quote_price(distance_m, duration_s, tariff, surge)


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
