"""The edge's pure pieces: WebSocket message parsing, the circuit breaker and its policy, the
in-process token bucket, tokens, and proto -> JSON conversion."""

from __future__ import annotations

import json
import logging
import math
from typing import Literal

import grpc
import pytest

from edge import convert, wire
from edge.auth import AuthError, decode_token, issue_token
from edge.idempotency import fingerprint
from edge.ratelimit import TokenBucket, retry_after_header
from edge.upstreams import EXPENSIVE, CircuitBreaker, Outcome, outcome_of
from edge.wire import FrameError, parse_frame, parse_position
from protos.common.v1 import common_pb2
from protos.rider.v1 import rider_pb2
from protos.trip.v1 import events_pb2 as trip_events
from protos.trip.v1 import trip_pb2

SECRET = "unit-test-secret-" + "z" * 32
NOW_MS = 1_760_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_position_message_with_defaults_parses() -> None:
    p = parse_position({"type": "position", "lat": 52.5, "lng": 13.4}, now_ms=NOW_MS)
    assert (p.lat, p.lng, p.heading, p.speed_mps, p.ts_ms) == (52.5, 13.4, 0.0, 0.0, NOW_MS)


@pytest.mark.parametrize(
    "frame",
    [
        {"lng": 13.0},
        {"lat": 91.0, "lng": 13.0},
        {"lat": 52.0, "lng": -181.0},
        {"lat": 52.0, "lng": 13.0, "heading": 360.0},
        {"lat": 52.0, "lng": 13.0, "speed_mps": -1},
        {"lat": "52", "lng": 13.0},
        {"lat": True, "lng": 13.0},
        {"lat": math.nan, "lng": 13.0},
        {"lat": 52.0, "lng": 13.0, "ts_ms": NOW_MS + 60_000},
    ],
)
def test_bad_positions_are_frame_errors(frame: dict[str, object]) -> None:
    with pytest.raises(FrameError) as err:
        parse_position({"type": "position", **frame}, now_ms=NOW_MS)
    assert err.value.code == "invalid_position"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("nope", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": 3}', "bad_message"),
        ("x" * 100, "too_large"),
    ],
)
def test_malformed_messages_name_their_problem(text: str, code: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_frame(text, max_bytes=64)
    assert err.value.code == code


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=5.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.t += 5.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failure()
    assert breaker.state == "open"
    clock.t += 5.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


# What every status says about the upstream, for a cheap and for an expensive call; written
# out by hand rather than derived from the module's own sets.
_S = grpc.StatusCode
H, B, N = Outcome.HEALTHY, Outcome.BROKEN, Outcome.NEUTRAL
BREAKER_POLICY = {
    _S.OK: (H, H),
    _S.UNAVAILABLE: (B, B),
    _S.INTERNAL: (B, B),
    _S.UNKNOWN: (B, B),
    _S.DATA_LOSS: (B, B),
    _S.DEADLINE_EXCEEDED: (B, N),
    _S.CANCELLED: (N, N),
    _S.RESOURCE_EXHAUSTED: (H, H),
    _S.INVALID_ARGUMENT: (H, H),
    _S.NOT_FOUND: (H, H),
    _S.ALREADY_EXISTS: (H, H),
    _S.FAILED_PRECONDITION: (H, H),
    _S.ABORTED: (H, H),
    _S.OUT_OF_RANGE: (H, H),
    _S.PERMISSION_DENIED: (H, H),
    _S.UNAUTHENTICATED: (H, H),
    _S.UNIMPLEMENTED: (H, H),
}


def test_the_breaker_policy_table_covers_every_status_code() -> None:
    assert set(BREAKER_POLICY) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(BREAKER_POLICY), ids=lambda c: c.name)
def test_breaker_policy_counts_dead_or_failing_upstreams_not_slow_expensive_work(
    code: grpc.StatusCode,
) -> None:
    cheap, expensive = BREAKER_POLICY[code]
    assert outcome_of(code, expensive=False) is cheap
    assert outcome_of(code, expensive=True) is expensive


def test_signups_and_logins_are_the_expensive_methods() -> None:
    assert {m for methods in EXPENSIVE.values() for m in methods} == {
        "rideshare.rider.v1.RiderService/CreateRider",
        "rideshare.rider.v1.RiderService/Authenticate",
        "rideshare.driver.v1.DriverService/CreateDriver",
        "rideshare.driver.v1.DriverService/Authenticate",
    }


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0, clock=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


def test_tokens_round_trip_and_reject_tampering() -> None:
    token = issue_token(SECRET, sub="r-1", role="rider", ttl_s=60, now=NOW_MS / 1000)
    with pytest.raises(AuthError, match="expired"):
        decode_token(SECRET, token)  # issued in 2025 for a minute
    fresh = issue_token(SECRET, sub="r-1", role="driver", ttl_s=60)
    principal = decode_token(SECRET, fresh)
    assert (principal.sub, principal.role) == ("r-1", "driver")
    with pytest.raises(AuthError):
        decode_token("another-secret-" + "q" * 32, fresh)
    with pytest.raises(AuthError):
        decode_token(SECRET, fresh[:-2] + "xx")


def test_fingerprint_ignores_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint(json.loads('{"b": [1, 2], "a": 1}'))
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_trip_json_hides_the_offer_from_riders() -> None:
    trip = trip_pb2.Trip(
        id="t-1",
        rider_id="r-1",
        state=trip_pb2.TRIP_STATE_DISPATCHING,
        vehicle_class=common_pb2.VEHICLE_CLASS_XL,
        pickup=common_pb2.LatLng(lat=1.0, lng=2.0),
        current_offer=trip_pb2.Offer(offer_id="o-1", driver_id="d-1"),
        quoted_fare=common_pb2.Money(amount_minor=1250, currency="EUR"),
    )
    for_rider = convert.trip_out(trip, show_offer=False).model_dump(mode="json")
    for_driver = convert.trip_out(trip).model_dump(mode="json")
    assert for_rider["state"] == "dispatching" and for_rider["vehicle_class"] == "xl"
    assert for_rider["current_offer"] is None and for_rider["driver_id"] is None
    assert for_rider["quoted_fare"] == {"amount_minor": 1250, "currency": "EUR"}
    assert for_rider["final_fare"] is None
    assert for_driver["current_offer"]["offer_id"] == "o-1"


def test_bearer_tokens_in_websocket_urls_never_reach_the_log() -> None:
    from edge.app import redact_tokens

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/v1/ws/driver?token=eyJhbGciOi.secret.sig&x=1"),
        None,
    )
    assert redact_tokens(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 - "WebSocket /v1/ws/driver?token=<redacted>&x=1" [accepted]'
    )


def _summary(trip_id: str, state: int, *, fare: int | None, minute: int) -> rider_pb2.TripSummary:
    s = rider_pb2.TripSummary(trip_id=trip_id, state=state)  # type: ignore[arg-type]
    s.requested_at.FromSeconds(1_760_000_000 + 60 * minute)
    if fare is not None:
        s.fare.CopyFrom(common_pb2.Money(amount_minor=fare, currency="EUR"))
    return s


def test_a_cancelled_trip_without_a_fee_has_no_fare_not_a_zero_one() -> None:
    no_fee = convert.trip_summary_out(
        _summary("t1", trip_pb2.TRIP_STATE_CANCELLED, fare=0, minute=0)
    )
    fee = convert.trip_summary_out(
        _summary("t2", trip_pb2.TRIP_STATE_CANCELLED, fare=500, minute=0)
    )
    assert no_fee.fare is None and no_fee.id == "t1"
    assert fee.fare is not None and fee.fare.amount_minor == 500


def test_a_trip_is_priced_alike_from_the_history_and_from_the_trip_service() -> None:
    money = common_pb2.Money(amount_minor=1250, currency="EUR")
    fee = common_pb2.Money(amount_minor=300, currency="EUR")
    live = trip_pb2.Trip(id="a", state=trip_pb2.TRIP_STATE_DISPATCHING, quoted_fare=money)
    done = trip_pb2.Trip(
        id="b", state=trip_pb2.TRIP_STATE_COMPLETED, quoted_fare=fee, final_fare=money
    )
    free = trip_pb2.Trip(id="c", state=trip_pb2.TRIP_STATE_CANCELLED, quoted_fare=money)
    paid = trip_pb2.Trip(
        id="d", state=trip_pb2.TRIP_STATE_CANCELLED, quoted_fare=money, cancellation_fee=fee
    )
    fares = [convert.trip_summary_of_trip(t).fare for t in (live, done, free, paid)]
    amounts = [f.amount_minor if f is not None else None for f in fares]
    assert amounts == [1250, 1250, None, 300]


def test_the_first_history_page_shows_the_trip_services_newer_state_and_new_trips_on_top() -> None:
    history = [
        convert.trip_summary_out(
            _summary("old2", trip_pb2.TRIP_STATE_DISPATCHING, fare=900, minute=2)
        ),
        convert.trip_summary_out(
            _summary("old1", trip_pb2.TRIP_STATE_COMPLETED, fare=700, minute=1)
        ),
    ]
    fresh_trips = []
    for trip_id, state, minute in (
        ("new", trip_pb2.TRIP_STATE_REQUESTED, 3),
        ("old2", trip_pb2.TRIP_STATE_CANCELLED, 2),
        ("older", trip_pb2.TRIP_STATE_COMPLETED, 0),  # on a later page of the history
    ):
        t = trip_pb2.Trip(id=trip_id, state=state)
        t.requested_at.FromSeconds(1_760_000_000 + 60 * minute)
        fresh_trips.append(convert.trip_summary_of_trip(t))
    merged = convert.merge_fresh(history, fresh_trips)
    assert [(t.id, t.state) for t in merged] == [
        ("new", "requested"),
        ("old2", "cancelled"),
        ("old1", "completed"),
    ]


def test_an_enum_value_whose_name_the_api_does_not_declare_is_refused_at_import() -> None:
    with pytest.raises(RuntimeError, match=r"\['admin', 'driver', 'system'\] are not in the API"):
        convert._names(trip_pb2.Actor, "ACTOR_", Literal["rider"])


def test_a_driver_sees_only_their_own_of_a_trips_parallel_offers() -> None:
    offers = [trip_pb2.Offer(offer_id=f"o-{n}", driver_id=f"d-{n}") for n in (1, 2, 3)]
    trip = trip_pb2.Trip(
        id="t-1",
        rider_id="r-1",
        state=trip_pb2.TRIP_STATE_DISPATCHING,
        current_offer=offers[0],
        current_offers=offers,
    )
    for_d2 = convert.trip_out(trip, driver="d-2").model_dump(mode="json")
    for_admin = convert.trip_out(trip).model_dump(mode="json")
    for_rider = convert.trip_out(trip, show_offer=False).model_dump(mode="json")
    assert [o["offer_id"] for o in for_d2["current_offers"]] == ["o-2"]
    assert for_d2["current_offer"]["offer_id"] == "o-2"
    assert [o["driver_id"] for o in for_admin["current_offers"]] == ["d-1", "d-2", "d-3"]
    assert for_rider["current_offers"] == [] and for_rider["current_offer"] is None


def test_an_offer_taken_by_another_driver_ends_as_accepted_elsewhere() -> None:
    ended = trip_events.TripOfferEnded(
        trip_id="t-1", offer_id="o-2", reason=trip_events.OFFER_END_REASON_ACCEPTED_ELSEWHERE
    )
    assert wire.offer_ended_frame(ended) == {
        "type": "offer_ended",
        "trip_id": "t-1",
        "offer_id": "o-2",
        "reason": "accepted_elsewhere",
    }
