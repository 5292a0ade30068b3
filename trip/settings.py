"""The trip service's own settings (``RIDESHARE_OFFER_TIMEOUT_S`` and friends), beside the
``ServiceSettings`` every service shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from rideshare.settings import SettingsError, env_addresses, env_float, env_int, env_str
from trip.domain import CancellationPolicy, DispatchPlan, FareBand, InvalidArgumentError
from trip.liveness import LivenessPolicy
from trip.matcher import CostModel

__all__ = ["TripSettings"]


@dataclass(frozen=True)
class TripSettings:
    """Dispatch, pricing and client settings of the trip service; tests build it directly."""

    location_addr: str = "127.0.0.1:50054"
    """host:port of the location service (RIDESHARE_LOCATION_ADDR)."""
    location_timeout_s: float = 1.0
    offer_timeout_s: float = 15.0
    radius_steps_m: tuple[int, ...] = (2000, 5000, 10000)
    candidates_per_search: int = 10
    max_offers: int = 10
    max_wait_s: float = 180.0
    parallel_offers: int = 1
    """Drivers a trip is offered to at once (RIDESHARE_DISPATCH_PARALLEL_OFFERS): the first
    to accept wins and the others' offers end; when all have ended, the next ones go out."""
    dispatch_poll_s: float = 0.2
    """How often the poller looks for expired offers and trips left without one."""
    dispatch_concurrency: int = 16
    """Trips one copy advances at once."""
    dispatch_claim_s: float = 10.0
    """How long a dispatcher's claim on a trip lasts: a copy that dies while advancing a trip
    holds it back from the other copies for at most this long."""
    dispatch_window_s: float = 1.0
    """Trips waiting for a driver within this window are matched together (``trip.batching``);
    0 dispatches each trip on its own, nearest first."""
    dispatch_region_res: int = 7
    """H3 resolution of a window's regions (7: cells of ~5 km^2): one search and one
    assignment per region."""
    dispatch_road_factor: float = 1.4
    """Road distance / straight-line distance, for the estimated pickup time."""
    dispatch_region_factors: tuple[tuple[str, float], ...] = ()
    """(H3 region, road-distance factor) where the region differs from the default."""
    dispatch_speed_kmh: float = 30.0
    """Average driving speed, for the estimated pickup time."""
    dispatch_max_pickup_m: float = 5000.0
    """A window never sends a driver farther than this (straight line) to a pickup."""
    dispatch_max_pairs: int = 2500
    """Above this many trips x drivers, a region's window falls back to nearest-first."""
    quote_ttl_s: float = 120.0
    cancellation_grace_s: float = 120.0
    surge_window_s: float = 600.0
    """Requests in the pickup's H3 ring during this window are the surge demand."""
    surge_supply_radius_m: float = 2000.0
    consumer_name: str = "trip"
    """Durable name of the driver.offline consumer (tests give each service its own)."""
    driver_silent_s: float = 60.0
    """Before pickup, a driver with no position or command for this long is replaced."""
    pickup_limit_s: float = 1200.0
    """A driver who accepted and has not arrived after this long is replaced."""
    boarding_wait_s: float = 600.0
    """A trip whose driver arrived and whose ride has not started after this long is cancelled."""
    ride_silent_flag_s: float = 120.0
    """A ride whose driver is silent this long is flagged for an operator."""
    ride_silent_end_s: float = 900.0
    """A ride whose driver is silent this long is ended by the system at the quoted fare."""
    dispatch_limit_s: float = 300.0
    """A trip still looking for a driver this long after dispatch (re)started ends; above
    max_wait_s + offer_timeout_s, so it only catches a dispatch that could not run."""
    trip_max_life_s: float = 28800.0
    """No trip is live longer than this after its request."""
    sweep_poll_s: float = 5.0
    """How often the sweeper looks for trips whose clock ran out."""
    sweep_concurrency: int = 8
    """Trips one sweeper checks at once (each may ask the location service once)."""
    fare_band_up: float = 0.10
    """A measured fare more than this share above the quote is charged as the quote and
    flagged for review (``pricing.FareBand`` says why this default)."""
    fare_band_down: float = 0.20
    """A measured fare more than this share below the quote is charged at the band's floor
    and flagged for review."""
    fare_track_timeout_s: float = 2.0
    """Deadline of the location call that measures a ride's distance at its end; without an
    answer in time the rider pays the quote."""

    def __post_init__(self) -> None:
        self.plan()  # fail fast on a plan the domain rejects
        self.fare_band()
        self.liveness()
        self.cost_model()
        if self.dispatch_limit_s <= self.max_wait_s + self.offer_timeout_s:
            raise SettingsError(
                f"RIDESHARE_DISPATCH_LIMIT_S={self.dispatch_limit_s:g} must exceed "
                f"RIDESHARE_DISPATCH_MAX_WAIT_S + RIDESHARE_OFFER_TIMEOUT_S "
                f"({self.max_wait_s + self.offer_timeout_s:g}), or it would end trips that "
                "dispatch is still working on"
            )

    def liveness(self) -> LivenessPolicy:
        """The clocks of the live states these settings describe (``trip/liveness.py``)."""
        try:
            return LivenessPolicy(
                driver_silent=timedelta(seconds=self.driver_silent_s),
                pickup_limit=timedelta(seconds=self.pickup_limit_s),
                boarding_wait=timedelta(seconds=self.boarding_wait_s),
                ride_silent_flag=timedelta(seconds=self.ride_silent_flag_s),
                ride_silent_end=timedelta(seconds=self.ride_silent_end_s),
                dispatch_limit=timedelta(seconds=self.dispatch_limit_s),
                max_life=timedelta(seconds=self.trip_max_life_s),
            )
        except InvalidArgumentError as exc:
            raise SettingsError(f"trip liveness settings: {exc}") from None

    def cost_model(self) -> CostModel:
        """How the batch matcher estimates a pickup's time (``trip.matcher``)."""
        try:
            return CostModel(
                road_factor=self.dispatch_road_factor,
                speed_mps=self.dispatch_speed_kmh / 3.6,
                # Never farther than nearest-first would look either.
                max_pickup_m=min(self.dispatch_max_pickup_m, self.radius_steps_m[-1]),
                region_factors=dict(self.dispatch_region_factors),
            )
        except ValueError as exc:
            raise SettingsError(f"dispatch cost settings: {exc}") from None

    def fare_band(self) -> FareBand:
        """The band around the quote a final fare may move within without a review."""
        try:
            return FareBand(up=self.fare_band_up, down=self.fare_band_down)
        except InvalidArgumentError as exc:
            raise SettingsError(
                f"RIDESHARE_FARE_BAND_UP / RIDESHARE_FARE_BAND_DOWN: {exc}"
            ) from None

    def plan(self) -> DispatchPlan:
        """The dispatch plan these settings describe."""
        try:
            return DispatchPlan(
                radius_steps_m=self.radius_steps_m,
                offer_timeout=timedelta(seconds=self.offer_timeout_s),
                candidates_per_search=self.candidates_per_search,
                max_offers=self.max_offers,
                max_wait=timedelta(seconds=self.max_wait_s),
                parallel_offers=self.parallel_offers,
            )
        except InvalidArgumentError as exc:
            raise SettingsError(f"dispatch settings: {exc}") from None

    @property
    def offer_timeout(self) -> timedelta:
        return timedelta(seconds=self.offer_timeout_s)

    @property
    def quote_ttl(self) -> timedelta:
        return timedelta(seconds=self.quote_ttl_s)

    @property
    def cancellation_policy(self) -> CancellationPolicy:
        return CancellationPolicy(grace=timedelta(seconds=self.cancellation_grace_s))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TripSettings:
        """Settings from ``RIDESHARE_*`` variables; a bad value names its variable."""
        raw_steps = env_str("RIDESHARE_DISPATCH_RADII_M", "2000,5000,10000", env=env)
        try:
            steps = tuple(int(part) for part in raw_steps.split(","))
        except ValueError:
            raise SettingsError(
                f"RIDESHARE_DISPATCH_RADII_M={raw_steps!r} is not a list of integers"
            ) from None
        max_wait_s = env_float("RIDESHARE_DISPATCH_MAX_WAIT_S", 180.0, minimum=1.0, env=env)
        offer_timeout_s = env_float("RIDESHARE_OFFER_TIMEOUT_S", 15.0, minimum=0.05, env=env)
        return cls(
            location_addr=env_addresses("RIDESHARE_LOCATION_ADDR", "127.0.0.1:50054", env=env),
            location_timeout_s=env_float(
                "RIDESHARE_LOCATION_TIMEOUT_S", 1.0, minimum=0.01, env=env
            ),
            offer_timeout_s=offer_timeout_s,
            radius_steps_m=steps,
            candidates_per_search=env_int(
                "RIDESHARE_DISPATCH_CANDIDATES", 10, minimum=1, maximum=50, env=env
            ),
            max_offers=env_int("RIDESHARE_DISPATCH_MAX_OFFERS", 10, minimum=1, env=env),
            max_wait_s=max_wait_s,
            parallel_offers=env_int(
                "RIDESHARE_DISPATCH_PARALLEL_OFFERS", 1, minimum=1, maximum=10, env=env
            ),
            dispatch_poll_s=env_float("RIDESHARE_DISPATCH_POLL_S", 0.2, minimum=0.01, env=env),
            dispatch_concurrency=env_int(
                "RIDESHARE_DISPATCH_CONCURRENCY", 16, minimum=1, maximum=256, env=env
            ),
            dispatch_claim_s=env_float("RIDESHARE_DISPATCH_CLAIM_S", 10.0, minimum=0.1, env=env),
            dispatch_window_s=env_float(
                "RIDESHARE_DISPATCH_WINDOW_S", 1.0, minimum=0.0, maximum=10.0, env=env
            ),
            dispatch_region_res=env_int(
                "RIDESHARE_DISPATCH_REGION_RES", 7, minimum=0, maximum=15, env=env
            ),
            dispatch_road_factor=env_float(
                "RIDESHARE_DISPATCH_ROAD_FACTOR", 1.4, minimum=1.0, maximum=5.0, env=env
            ),
            dispatch_region_factors=_region_factors(
                env_str("RIDESHARE_DISPATCH_REGION_FACTORS", "", env=env)
            ),
            dispatch_speed_kmh=env_float(
                "RIDESHARE_DISPATCH_SPEED_KMH", 30.0, minimum=1.0, maximum=200.0, env=env
            ),
            dispatch_max_pickup_m=env_float(
                "RIDESHARE_DISPATCH_MAX_PICKUP_M", 5000.0, minimum=100.0, env=env
            ),
            dispatch_max_pairs=env_int("RIDESHARE_DISPATCH_MAX_PAIRS", 2500, minimum=1, env=env),
            quote_ttl_s=env_float("RIDESHARE_QUOTE_TTL_S", 120.0, minimum=1.0, env=env),
            cancellation_grace_s=env_float(
                "RIDESHARE_CANCELLATION_GRACE_S", 120.0, minimum=0.0, env=env
            ),
            surge_window_s=env_float("RIDESHARE_SURGE_WINDOW_S", 600.0, minimum=1.0, env=env),
            surge_supply_radius_m=env_float(
                "RIDESHARE_SURGE_SUPPLY_RADIUS_M", 2000.0, minimum=1.0, env=env
            ),
            driver_silent_s=env_float("RIDESHARE_DRIVER_SILENT_S", 60.0, minimum=1.0, env=env),
            pickup_limit_s=env_float("RIDESHARE_PICKUP_LIMIT_S", 1200.0, minimum=1.0, env=env),
            boarding_wait_s=env_float("RIDESHARE_BOARDING_WAIT_S", 600.0, minimum=1.0, env=env),
            ride_silent_flag_s=env_float(
                "RIDESHARE_RIDE_SILENT_FLAG_S", 120.0, minimum=1.0, env=env
            ),
            ride_silent_end_s=env_float("RIDESHARE_RIDE_SILENT_END_S", 900.0, minimum=1.0, env=env),
            dispatch_limit_s=env_float(
                "RIDESHARE_DISPATCH_LIMIT_S",
                max(300.0, max_wait_s + offer_timeout_s + 60.0),
                minimum=1.0,
                env=env,
            ),
            trip_max_life_s=env_float("RIDESHARE_TRIP_MAX_LIFE_S", 28800.0, minimum=60.0, env=env),
            sweep_poll_s=env_float("RIDESHARE_SWEEP_POLL_S", 5.0, minimum=0.01, env=env),
            sweep_concurrency=env_int(
                "RIDESHARE_SWEEP_CONCURRENCY", 8, minimum=1, maximum=256, env=env
            ),
            fare_band_up=env_float(
                "RIDESHARE_FARE_BAND_UP", 0.10, minimum=0.0, maximum=1.0, env=env
            ),
            fare_band_down=env_float(
                "RIDESHARE_FARE_BAND_DOWN", 0.20, minimum=0.0, maximum=1.0, env=env
            ),
            fare_track_timeout_s=env_float(
                "RIDESHARE_FARE_TRACK_TIMEOUT_S", 2.0, minimum=0.05, env=env
            ),
        )


def _region_factors(raw: str) -> tuple[tuple[str, float], ...]:
    """``cell=factor,cell=factor`` (RIDESHARE_DISPATCH_REGION_FACTORS) as pairs."""
    pairs = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        cell, _, factor = part.partition("=")
        try:
            pairs.append((cell.strip(), float(factor)))
        except ValueError:
            raise SettingsError(
                f"RIDESHARE_DISPATCH_REGION_FACTORS={raw!r}: {part!r} is not cell=factor"
            ) from None
    return tuple(pairs)
