"""The batch matcher on cases small enough to solve by hand, and the dispatch rounds it
explains."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trip.domain import Actor, Transition, TripState
from trip.explain import DispatchRound, RoundLog, candidates_from_json, offer_outcome, outcome_of
from trip.matcher import CostModel, DriverHit, Reason, WaitingTrip, match, rank_nearest
from trip.pricing import LatLng, VehicleClass

# Along one meridian a degree of latitude is ~111.2 km: points 0.009 deg apart are ~1 km.
KM = 0.009
MODEL = CostModel(road_factor=1.5, speed_mps=10.0, max_pickup_m=5000.0)


def at(km_north: float) -> LatLng:
    return LatLng(10.0 + km_north * KM, 20.0)


def trip(trip_id: str, km: float, **kw: object) -> WaitingTrip:
    return WaitingTrip(trip_id, at(km), VehicleClass.STANDARD, **kw)  # type: ignore[arg-type]


def driver(driver_id: str, km: float, **kw: object) -> DriverHit:
    return DriverHit(driver_id, at(km), VehicleClass.STANDARD, **kw)  # type: ignore[arg-type]


def test_the_classic_two_by_two_gives_each_trip_the_driver_that_minimises_the_total() -> None:
    # Drivers at 0 and 2 km, trips at 1 and 3 km. Both drivers are 1 km from trip a, so
    # nearest-first may give it d2 and leave trip b with d1, 3 km away (total 4 km). The
    # assignment sends d1 to a and d2 to b: 1 + 1 = 2 km.
    trips = [trip("a", 1.0), trip("b", 3.0)]
    drivers = [driver("d1", 0.0), driver("d2", 2.0)]
    result = match(trips, drivers, MODEL)
    assert result["a"].assigned == "d1"
    assert result["b"].assigned == "d2"
    # Each trip's other driver comes after its own, marked as given to the other trip.
    assert [c.driver_id for c in result["a"].candidates] == ["d1", "d2"]
    assert result["a"].candidates[1].reason is Reason.OFFERED_ELSEWHERE


def test_greedy_would_strand_the_second_trip_where_the_assignment_does_not() -> None:
    # d1 at 0, d2 at 1.8 km; trip a at 1 km (nearest d2 at 0.8), trip b at 2.6 km (d2 at
    # 0.8, d1 at 2.6). Greedy: a takes d2, b gets d1 at 2.6 km (total 3.4 km). Optimal:
    # a takes d1 (1 km), b takes d2 (0.8 km), total 1.8 km.
    trips = [trip("a", 1.0), trip("b", 2.6)]
    drivers = [driver("d1", 0.0), driver("d2", 1.8)]
    greedy = rank_nearest(trips[0], drivers, MODEL)
    assert greedy.assigned == "d2"
    result = match(trips, drivers, MODEL)
    assert (result["a"].assigned, result["b"].assigned) == ("d1", "d2")


def test_cost_is_the_estimated_pickup_time_from_the_road_factor_and_speed() -> None:
    result = match([trip("a", 0.0)], [driver("d1", 1.0)], MODEL)
    (chosen,) = result["a"].candidates
    assert chosen.distance_m == pytest.approx(1000.0, rel=0.01)
    assert chosen.pickup_s == pytest.approx(150.0, rel=0.01)  # 1 km x 1.5 / 10 m/s
    assert chosen.cost == chosen.pickup_s


def test_a_region_has_its_own_road_factor() -> None:
    model = CostModel(road_factor=1.5, speed_mps=10.0, region_factors={"river": 3.0})
    result = match([trip("a", 0.0, region="river")], [driver("d1", 1.0)], model)
    assert result["a"].candidates[0].pickup_s == pytest.approx(300.0, rel=0.01)


def test_more_trips_than_drivers_leaves_the_costliest_trip_without_a_driver() -> None:
    trips = [trip("a", 0.5), trip("b", 4.0)]
    result = match(trips, [driver("d1", 0.0)], MODEL)
    assert result["a"].assigned == "d1"
    assert result["b"].assigned is None
    assert [(c.driver_id, c.reason) for c in result["b"].candidates] == [
        ("d1", Reason.OFFERED_ELSEWHERE)
    ]


def test_more_drivers_than_trips_ranks_the_unchosen_by_cost() -> None:
    drivers = [driver("far", 3.0), driver("near", 0.2), driver("mid", 1.0)]
    result = match([trip("a", 0.0)], drivers, MODEL)
    assert [(c.driver_id, c.reason) for c in result["a"].candidates] == [
        ("near", Reason.ASSIGNED),
        ("mid", Reason.COSTLIER),
        ("far", Reason.COSTLIER),
    ]


def test_drivers_the_trip_may_not_have_are_excluded_with_their_reason() -> None:
    drivers = [
        driver("declined", 0.1),
        DriverHit("xl", at(0.2), VehicleClass.XL),
        driver("stale", 0.3, position_age_s=600.0),
        driver("far", 6.0),
        driver("ok", 1.0),
    ]
    result = match([trip("a", 0.0, excluded=frozenset({"declined"}))], drivers, MODEL)
    assert result["a"].assigned == "ok"
    assert {c.driver_id: c.reason for c in result["a"].excluded} == {
        "declined": Reason.DECLINED_BEFORE,
        "xl": Reason.WRONG_CLASS,
        "stale": Reason.STALE_POSITION,
        "far": Reason.OUTSIDE_LIMIT,
    }


def test_a_forbidden_pair_is_never_assigned_even_when_it_is_the_only_one() -> None:
    result = match([trip("a", 0.0), trip("b", 0.1)], [driver("far", 9.0)], MODEL)
    assert result["a"].assigned is None and result["b"].assigned is None
    assert result["a"].candidates == ()


def test_an_empty_window_and_a_window_without_drivers() -> None:
    assert match([], [driver("d1", 0.0)], MODEL) == {}
    result = match([trip("a", 0.0)], [], MODEL)
    assert result["a"].candidates == () and result["a"].excluded == ()


def test_a_cost_model_with_a_factor_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="factors"):
        CostModel(road_factor=0.9)
    with pytest.raises(ValueError, match="speed"):
        CostModel(speed_mps=0.0)


def _transition(version: int, command: str, actor_id: str = "") -> Transition:
    return Transition(
        from_state=TripState.DISPATCHING,
        to_state=TripState.DISPATCHING,
        command=command,
        actor=Actor.DRIVER if actor_id else Actor.SYSTEM,
        actor_id=actor_id,
        reason="",
        version=version,
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_an_offer_ends_as_its_driver_answered_or_as_the_trip_moved_on() -> None:
    round_ = DispatchRound("batch", 2, (), (), (("d1", "o1"), ("d2", "o2")), version=3)
    history = [
        _transition(3, "offer"),
        _transition(4, "decline", "d1"),
        _transition(5, "accept", "d2"),
    ]
    pending: frozenset[str] = frozenset()
    assert offer_outcome(round_, "d1", "o1", history, pending=pending) == "declined"
    assert offer_outcome(round_, "d2", "o2", history, pending=pending) == "accepted"
    assert offer_outcome(round_, "d3", "o3", history, pending=pending) == "accepted_elsewhere"
    assert offer_outcome(round_, "d1", "o1", [_transition(4, "expire_offer")], pending=pending) == (
        "expired"
    )
    assert offer_outcome(round_, "d1", "o1", [], pending=frozenset({"o1"})) == "pending"
    assert outcome_of(["declined", "accepted"]) == "accepted"
    assert outcome_of(["expired", "pending"]) == "pending"
    assert outcome_of(["trip_cancelled"]) == "trip_cancelled"
    assert outcome_of([]) == "no_drivers"


def test_a_round_keeps_its_candidates_and_offers_through_json() -> None:
    model = CostModel()
    log = RoundLog(model, policy="batch", window_trips=2)
    log.ranked(match([trip("a", 0.0)], [driver("d1", 0.5), driver("d2", 9.0)], model)["a"])
    assert [n.driver_id for n in log.offer_order or ()] == ["d1"]
    round_ = log.offered("d1", "o1")
    candidates, excluded, offers = candidates_from_json(round_.candidates_json())
    assert [(c.driver_id, c.reason) for c in candidates] == [("d1", Reason.ASSIGNED)]
    assert [(c.driver_id, c.reason) for c in excluded] == [("d2", Reason.OUTSIDE_LIMIT)]
    assert offers == (("d1", "o1"),)
