"""Pricing: known values worked out by hand, rounding, minimum fare, surge, H3 cells."""

from __future__ import annotations

import math

import h3
import pytest

from trip.errors import InvalidArgumentError
from trip.pricing import (
    TARIFFS,
    LatLng,
    Money,
    Tariff,
    VehicleClass,
    estimate_route,
    final_fare,
    haversine_m,
    pickup_cell,
    quote_price,
    ring,
    surge_multiplier,
)

STANDARD = TARIFFS[VehicleClass.STANDARD]  # 250 base, 110/km, 25/min, minimum 600 (EUR cents)
PARIS = LatLng(48.8566, 2.3522)
LONDON = LatLng(51.5074, -0.1278)


# --- distance --------------------------------------------------------------------------------


def test_paris_to_london_is_about_343_5_km() -> None:
    assert haversine_m(PARIS, LONDON) == pytest.approx(343_500, rel=0.005)


def test_a_quarter_meridian_is_pi_over_two_earth_radii() -> None:
    # pi/2 * 6,371,008.8 m = 10,007,557 m
    assert haversine_m(LatLng(0, 0), LatLng(90, 0)) == pytest.approx(10_007_557, abs=1)


def test_distance_from_a_point_to_itself_is_zero_and_distance_is_symmetric() -> None:
    assert haversine_m(PARIS, PARIS) == 0
    assert haversine_m(PARIS, LONDON) == haversine_m(LONDON, PARIS)


def test_antipodal_points_are_half_the_circumference_apart() -> None:
    assert haversine_m(LatLng(0, 0), LatLng(0, 180)) == pytest.approx(math.pi * 6_371_008.8)


def test_route_estimate_is_great_circle_times_detour_at_city_speed() -> None:
    # 0.01 degrees of equator = 1111.951 m; x 1.3 = 1445.536 m -> 1446 m; / 8.3 m/s = 174.16 s
    assert estimate_route(LatLng(0, 0), LatLng(0, 0.01)) == (1446, 174)


def test_route_estimate_takes_other_detour_and_speed() -> None:
    # 1111.951 m x 2 = 2223.902 m -> 2224 m; / 10 m/s = 222.39 s -> 222 s
    assert estimate_route(LatLng(0, 0), LatLng(0, 0.01), detour=2.0, speed_mps=10.0) == (2224, 222)


# --- fares -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance_m", "duration_s", "surge", "expected_minor"),
    [
        (5000, 600, 1.0, 1050),  # 250 + 5 km x 110 + 10 min x 25
        (5000, 600, 1.3, 1365),  # 1050 x 1.3
        (5000, 600, 1.1, 1155),  # 1050 x 1.1 exactly, although 1050 * 1.1 == 1155.0000000000002
        (3333, 100, 1.0, 658),  # 250 + 366.63 + 41.67 = 658.30 -> 658
        (5000, 6, 1.0, 803),  # 250 + 550 + 2.5 = 802.5 -> 803 (half up, not half to even)
        (1000, 60, 2.0, 770),  # 385 x 2
        (1000, 60, 1.0, 600),  # 385 is below the minimum fare
        (1000, 60, 1.5, 600),  # 577.5 -> 578, still below the minimum: surge does not lift it
        (0, 0, 3.0, 750),  # 250 x 3
    ],
)
def test_standard_fare_is_base_plus_distance_plus_time_times_surge(
    distance_m: int, duration_s: int, surge: float, expected_minor: int
) -> None:
    assert quote_price(distance_m, duration_s, STANDARD, surge) == Money(expected_minor, "EUR")


@pytest.mark.parametrize(
    ("vehicle_class", "expected_minor"),
    [
        (VehicleClass.STANDARD, 1050),  # 250 + 550 + 250
        (VehicleClass.COMFORT, 1350),  # 350 + 700 + 300
        (VehicleClass.XL, 1550),  # 400 + 800 + 350
    ],
)
def test_each_vehicle_class_has_its_own_tariff(
    vehicle_class: VehicleClass, expected_minor: int
) -> None:
    assert quote_price(5000, 600, TARIFFS[vehicle_class], 1.0).amount_minor == expected_minor


def test_every_vehicle_class_has_a_tariff_whose_minimum_exceeds_its_base() -> None:
    assert set(TARIFFS) == set(VehicleClass)
    for tariff in TARIFFS.values():
        assert tariff.currency == "EUR"
        assert tariff.minimum_fare > tariff.base > 0
        assert tariff.cancellation_fee > 0


def test_fare_is_in_the_tariffs_currency() -> None:
    usd = Tariff("USD", 100, 100, 10, 200, 300)
    assert quote_price(10_000, 0, usd, 1.0) == Money(1100, "USD")


def test_final_fare_is_priced_like_the_quote_from_actual_distance_and_time() -> None:
    # 7.2 km and 19 min: (250 + 792 + 475) x 1.2 = 1820.4 -> 1820
    assert final_fare(7200, 1140, STANDARD, 1.2) == Money(1820, "EUR")
    assert final_fare(7200, 1140, STANDARD, 1.0) == quote_price(7200, 1140, STANDARD, 1.0)


def test_final_fare_is_never_below_the_minimum_fare() -> None:
    assert final_fare(0, 0, STANDARD, 1.0) == Money(STANDARD.minimum_fare, "EUR")
    assert final_fare(10, 5, STANDARD, 2.0) == Money(STANDARD.minimum_fare, "EUR")


@pytest.mark.parametrize(
    ("distance_m", "duration_s", "surge"),
    [(-1, 0, 1.0), (0, -1, 1.0), (100, 100, 0.9), (100, 100, math.nan), (100, 100, math.inf)],
)
def test_fare_rejects_negative_amounts_and_surge_below_one(
    distance_m: int, duration_s: int, surge: float
) -> None:
    with pytest.raises(InvalidArgumentError):
        quote_price(distance_m, duration_s, STANDARD, surge)


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(-1, "EUR"), (1.5, "EUR"), (True, "EUR"), (100, "eur"), (100, "EURO"), (100, "")],
)
def test_money_is_a_non_negative_integer_with_an_iso_currency(
    amount: object, currency: str
) -> None:
    with pytest.raises(InvalidArgumentError):
        Money(amount, currency)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lat", "lng"), [(90.01, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (math.nan, 0.0)]
)
def test_coordinates_outside_the_globe_are_rejected(lat: float, lng: float) -> None:
    with pytest.raises(InvalidArgumentError):
        LatLng(lat, lng)


# --- surge -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("demand", "supply", "previous", "expected"),
    [
        (0, 0, None, 1.0),  # nothing happening
        (5, 10, None, 1.0),  # supply covers demand
        (10, 10, None, 1.0),
        (12, 10, None, 1.2),
        (15, 10, None, 1.5),
        (23, 20, None, 1.2),  # 1.15 rounds half up
        (21, 20, None, 1.1),  # 1.05 rounds half up
        (100, 10, None, 3.0),  # capped
        (3, 0, None, 3.0),  # demand and no supply: the cap
        (0, 0, 2.0, 1.5),  # 0.5 x 1.0 + 0.5 x 2.0: eases down, not straight to 1.0
        (30, 10, 1.0, 2.0),  # 0.5 x 3.0 + 0.5 x 1.0: rises halfway at once
        (20, 10, 3.0, 2.5),  # 0.5 x 2.0 + 0.5 x 3.0
        (100, 1, 3.0, 3.0),
    ],
)
def test_surge_is_the_smoothed_demand_supply_ratio_capped_and_rounded(
    demand: int, supply: int, previous: float | None, expected: float
) -> None:
    assert surge_multiplier(demand, supply, previous) == expected


def test_surge_respects_a_lower_cap() -> None:
    assert surge_multiplier(100, 10, None, cap=2.0) == 2.0
    assert surge_multiplier(100, 10, 2.9, cap=2.0) == 2.0  # a previous value above a new cap


def test_surge_with_full_smoothing_weight_ignores_the_previous_value() -> None:
    assert surge_multiplier(15, 10, 3.0, smoothing=1.0) == 1.5


def test_surge_never_decreases_with_demand_nor_increases_with_supply() -> None:
    for previous in (None, 1.0, 1.7, 3.0):
        for supply in range(6):
            by_demand = [surge_multiplier(d, supply, previous) for d in range(40)]
            assert by_demand == sorted(by_demand)
        for demand in range(40):
            by_supply = [surge_multiplier(demand, s, previous) for s in range(12)]
            assert by_supply == sorted(by_supply, reverse=True)


def test_surge_is_always_between_one_and_the_cap_in_steps_of_a_tenth() -> None:
    for demand in range(30):
        for supply in range(10):
            value = surge_multiplier(demand, supply, 2.2)
            assert 1.0 <= value <= 3.0
            assert value == round(value, 1)


@pytest.mark.parametrize(
    ("demand", "supply", "smoothing", "cap"),
    [(-1, 0, 0.5, 3.0), (0, -1, 0.5, 3.0), (1, 1, 0.0, 3.0), (1, 1, 1.5, 3.0), (1, 1, 0.5, 0.9)],
)
def test_surge_rejects_negative_counts_and_bad_parameters(
    demand: int, supply: int, smoothing: float, cap: float
) -> None:
    with pytest.raises(InvalidArgumentError):
        surge_multiplier(demand, supply, None, smoothing=smoothing, cap=cap)


# --- H3 cells --------------------------------------------------------------------------------


def test_pickup_cell_is_the_resolution_8_h3_cell_containing_the_point() -> None:
    cell = pickup_cell(PARIS.lat, PARIS.lng)
    assert h3.is_valid_cell(cell)
    assert h3.get_resolution(cell) == 8
    assert cell == h3.latlng_to_cell(PARIS.lat, PARIS.lng, 8)
    center = LatLng(*h3.cell_to_latlng(cell))
    assert haversine_m(center, PARIS) < 1000  # a res-8 cell is about 1 km across


def test_pickup_cell_takes_another_resolution() -> None:
    assert h3.get_resolution(pickup_cell(PARIS.lat, PARIS.lng, resolution=7)) == 7


def test_pickup_cell_rejects_coordinates_outside_the_globe() -> None:
    with pytest.raises(InvalidArgumentError):
        pickup_cell(95.0, 0.0)


@pytest.mark.parametrize(("k", "size"), [(0, 1), (1, 7), (2, 19)])
def test_ring_holds_the_cell_and_its_neighbours_within_k_steps(k: int, size: int) -> None:
    cell = pickup_cell(PARIS.lat, PARIS.lng)
    cells = ring(cell, k)
    assert len(cells) == size
    assert cell in cells


def test_ring_rejects_a_negative_size_and_a_malformed_cell() -> None:
    with pytest.raises(InvalidArgumentError):
        ring(pickup_cell(PARIS.lat, PARIS.lng), -1)
    with pytest.raises(InvalidArgumentError):
        ring("not-a-cell", 1)
