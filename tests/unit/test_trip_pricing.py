"""Pricing: known values worked out by hand, rounding, minimum fare, surge, H3 cells."""

from __future__ import annotations

import math

import h3
import pytest

from trip.errors import InvalidArgumentError
from trip.pricing import (
    TARIFFS,
    FareBand,
    FareRule,
    FareSettlement,
    LatLng,
    MeasureSource,
    Money,
    Tariff,
    TrackMeasurement,
    VehicleClass,
    estimate_route,
    haversine_m,
    pickup_cell,
    quote_price,
    quote_settlement,
    ring,
    settle_fare,
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


# --- the final fare: the quote holds ----------------------------------------------------------

# 5 km and 10 min: 250 + 550 + 250 = 1050 cents; the default band is [840, 1155].
QUOTED = quote_price(5000, 600, STANDARD, 1.0)


def settle(
    track: TrackMeasurement | None,
    duration_s: int = 600,
    *,
    reported_distance_m: int | None = None,
    reported_duration_s: int | None = None,
) -> FareSettlement:
    return settle_fare(
        quoted=QUOTED,
        quoted_distance_m=5000,
        quoted_duration_s=600,
        duration_s=duration_s,
        track=track,
        tariff=STANDARD,
        surge=1.0,
        reported_distance_m=reported_distance_m,
        reported_duration_s=reported_duration_s,
    )


def test_the_default_band_is_ten_percent_up_and_twenty_down() -> None:
    assert QUOTED == Money(1050, "EUR")
    assert FareBand().edges(QUOTED) == (Money(840, "EUR"), Money(1155, "EUR"))


def test_band_edges_round_half_up() -> None:
    # 1005 x 1.1 = 1105.5 -> 1106; 1005 x 0.8 = 804
    band = FareBand(up=0.1, down=0.2)
    assert band.edges(Money(1005, "EUR")) == (Money(804, "EUR"), Money(1106, "EUR"))


def test_a_measured_price_within_the_band_is_charged() -> None:
    # 5.5 km, 10 min: 250 + 605 + 250 = 1105
    settled = settle(TrackMeasurement(5500, points=120, points_ignored=2))
    assert settled.rule is FareRule.WITHIN_BAND
    assert settled.charged == Money(1105, "EUR")
    assert settled.measured_fare == Money(1105, "EUR")
    assert not settled.flagged
    assert settled.measured_distance_m == 5500
    assert settled.distance_source is MeasureSource.LOCATION_TRACK
    assert settled.duration_source is MeasureSource.SERVER_CLOCK
    assert (settled.track_points, settled.track_points_ignored) == (120, 2)


def test_a_measured_price_above_the_band_charges_the_quote_and_flags_the_ride() -> None:
    # 10 km, 10 min: 250 + 1100 + 250 = 1600 > 1155
    settled = settle(TrackMeasurement(10_000, points=300))
    assert settled.rule is FareRule.ABOVE_BAND
    assert settled.charged == QUOTED
    assert settled.flagged
    assert settled.measured_fare == Money(1600, "EUR")


def test_a_measured_price_below_the_band_charges_its_floor_and_flags_the_ride() -> None:
    # 2 km, 5 min: 250 + 220 + 125 = 595, the minimum fare 600 < 840
    settled = settle(TrackMeasurement(2000, points=50), duration_s=300)
    assert settled.rule is FareRule.BELOW_BAND
    assert settled.charged == Money(840, "EUR")
    assert settled.flagged
    assert settled.measured_fare == Money(600, "EUR")


def test_without_a_measured_distance_the_quote_is_charged_and_the_basis_says_so() -> None:
    settled = settle(None, duration_s=4000)
    assert settled.rule is FareRule.NO_MEASUREMENT
    assert settled.charged == QUOTED
    assert not settled.flagged
    assert settled.measured_distance_m is None
    assert settled.distance_source is MeasureSource.NONE
    assert settled.measured_fare is None
    assert settled.measured_duration_s == 4000


def test_what_the_driver_reports_is_recorded_and_never_priced() -> None:
    """The finding: 10,000 km and a week reported turned a 10.35 EUR quote into 13,522.50."""
    track = TrackMeasurement(5500, points=120)
    honest = settle(track)
    absurd = settle(track, reported_distance_m=10_000_000, reported_duration_s=604_800)
    assert absurd.charged == honest.charged == Money(1105, "EUR")
    assert absurd.rule is FareRule.WITHIN_BAND
    assert (absurd.reported_distance_m, absurd.reported_duration_s) == (
        10_000_000,
        604_800,
    )
    assert settle(None, reported_distance_m=10_000_000).charged == QUOTED


@pytest.mark.parametrize("distance_m", [0, 1, 4000, 5600, 6000, 100_000, 10_000_000])
@pytest.mark.parametrize("duration_s", [0, 600, 900, 604_800])
def test_no_track_moves_the_charge_outside_the_band(distance_m: int, duration_s: int) -> None:
    settled = settle(TrackMeasurement(distance_m, points=2), duration_s=duration_s)
    assert settled.charged.amount_minor <= 1155
    assert settled.charged.amount_minor >= 840


def test_a_ride_the_system_ended_charges_the_quote() -> None:
    settled = quote_settlement(
        quoted=QUOTED,
        quoted_distance_m=5000,
        quoted_duration_s=600,
        duration_s=700,
        rule=FareRule.DRIVER_SILENT,
    )
    assert (settled.charged, settled.rule, settled.flagged) == (
        QUOTED,
        FareRule.DRIVER_SILENT,
        False,
    )


@pytest.mark.parametrize(("up", "down"), [(-0.1, 0.1), (0.1, 1.5), (math.nan, 0.1)])
def test_a_band_outside_zero_to_one_is_refused(up: float, down: float) -> None:
    with pytest.raises(InvalidArgumentError):
        FareBand(up=up, down=down)


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
