"""Service tokens, the acting user and access rules (rideshare/identity.py), without I/O."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest

from driver.server import ACCESS as DRIVER_ACCESS
from edge.settings import load_jwt_secret
from location.server import ACCESS as LOCATION_ACCESS
from notification.server import ACCESS as NOTIFICATION_ACCESS
from protos.rider.v1 import rider_pb2
from rider.server import ACCESS as RIDER_ACCESS
from rideshare.identity import (
    LEEWAY_S,
    OPERATOR,
    Allow,
    Caller,
    IdentityError,
    NotActingAsError,
    TokenSigner,
    TokenVerifier,
    User,
    access_table,
    allow,
    caller_var,
    is_admin_call,
    may_read,
    mint_token,
    require_acting_as,
)
from rideshare.settings import INTERNAL_SECRET_FILE, SettingsError, load_internal_secret
from trip.server import ACCESS as TRIP_ACCESS

SECRET = "s" * 64
RIDER_SERVICE = rider_pb2.DESCRIPTOR.services_by_name["RiderService"]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_token_names_the_service_that_minted_it() -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, service="trip")
    assert verifier.caller(bearer(token), None) == Caller("trip")


def test_the_edge_may_act_for_a_user_and_another_service_may_not() -> None:
    verifier = TokenVerifier(SECRET)
    edge, trip = mint_token(SECRET, service="edge"), mint_token(SECRET, service="trip")
    assert verifier.caller(bearer(edge), "rider:r-1") == Caller("edge", User("rider", "r-1"))
    assert verifier.caller(bearer(mint_token(SECRET, service=OPERATOR)), "admin:a") == Caller(
        OPERATOR, User("admin", "a")
    )
    with pytest.raises(IdentityError, match="trip may not act for a user"):
        verifier.caller(bearer(trip), "rider:r-1")


@pytest.mark.parametrize(
    "header", ["rider", "rider:", ":r-1", "boss:r-1", "rider:" + "x" * 129, "rider:a\nb"]
)
def test_a_malformed_acting_user_is_refused(header: str) -> None:
    with pytest.raises(IdentityError):
        TokenVerifier(SECRET).caller(bearer(mint_token(SECRET, service="edge")), header)


def test_tokens_signed_otherwise_or_shaped_otherwise_are_refused() -> None:
    now = int(time.time())
    claims = {"iss": "rideshare", "aud": "rideshare-internal", "sub": "edge", "exp": now + 60}
    bad = [
        mint_token("t" * 64, service="edge"),  # another install's secret
        jwt.encode(claims, key=None, algorithm="none"),
        jwt.encode({**claims, "aud": "apps"}, SECRET, algorithm="HS256"),
        jwt.encode({**claims, "iss": "someone"}, SECRET, algorithm="HS256"),
        jwt.encode({**claims, "sub": "mallory"}, SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, algorithm="HS256"),
        jwt.encode(claims, SECRET, algorithm="HS512"),
        "not-a-token",
    ]
    verifier = TokenVerifier(SECRET)
    for token in bad:
        with pytest.raises(IdentityError):
            verifier.caller(bearer(token), None)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic abc"])
def test_a_call_without_a_bearer_token_is_refused(authorization: str | None) -> None:
    with pytest.raises(IdentityError):
        TokenVerifier(SECRET).caller(authorization, None)


def test_an_expired_token_is_refused_after_the_leeway_even_when_cached() -> None:
    clock = Clock()
    verifier = TokenVerifier(SECRET, clock=clock)
    token = mint_token(SECRET, service="edge", ttl_s=60, now=clock.now)
    assert verifier.service_of(token) == "edge"
    clock.now += 60 + LEEWAY_S - 1
    assert verifier.service_of(token) == "edge"  # from the cache, within the leeway
    clock.now += 2
    with pytest.raises(IdentityError, match="expired"):
        verifier.service_of(token)


def test_a_verified_token_is_answered_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, service="location")
    assert verifier.service_of(token) == "location"

    def no_more_checks(*args: object, **kwargs: object) -> object:
        raise AssertionError("checked the signature again")

    monkeypatch.setattr(jwt, "decode", no_more_checks)
    assert verifier.service_of(token) == "location"


def test_the_cache_stays_bounded() -> None:
    verifier = TokenVerifier(SECRET, cache_size=4)
    for i in range(10):
        verifier.service_of(mint_token(SECRET, service="edge", now=time.time() - i))
    assert len(verifier._cache) <= 4


def test_a_signer_reuses_its_token_and_renews_it_before_it_expires() -> None:
    clock = Clock()
    signer = TokenSigner(SECRET, "trip", ttl_s=400, clock=clock)
    first = signer.bearer
    clock.now += 299
    assert signer.bearer == first
    clock.now += 2
    renewed = signer.bearer
    assert renewed != first
    verifier = TokenVerifier(SECRET, clock=clock)
    assert verifier.caller(renewed, None) == Caller("trip")


def test_unknown_services_cannot_sign_or_be_allowed() -> None:
    with pytest.raises(ValueError):
        TokenSigner(SECRET, "mallory")
    with pytest.raises(ValueError):
        mint_token(SECRET, service="mallory")
    with pytest.raises(ValueError):
        allow("mallory")


def test_a_rule_admits_its_services_its_users_roles_and_the_operator() -> None:
    rule = allow("trip", users=("rider",))
    assert rule.permits(Caller("trip"))
    assert rule.permits(Caller(OPERATOR))
    assert rule.permits(Caller("edge", User("rider", "r")))
    assert rule.permits(Caller(OPERATOR, User("rider", "r")))
    assert not rule.permits(Caller("edge"))
    assert not rule.permits(Caller("location"))
    assert not rule.permits(Caller("edge", User("driver", "d")))
    assert not rule.permits(Caller(OPERATOR, User("admin", "a")))  # acting: the role counts
    assert not Allow().permits(Caller("edge"))


def test_a_table_must_decide_on_every_method_and_nothing_else() -> None:
    rules = {m.name: allow("edge") for m in RIDER_SERVICE.methods}
    table = access_table(RIDER_SERVICE, rules)
    assert set(table) == {f"/rideshare.rider.v1.RiderService/{name}" for name in rules}
    with pytest.raises(ValueError, match="missing"):
        access_table(RIDER_SERVICE, {k: v for k, v in rules.items() if k != "GetRider"})
    with pytest.raises(ValueError, match="unknown"):
        access_table(RIDER_SERVICE, {**rules, "Nothing": allow("edge")})


def test_no_method_is_open_to_every_caller_and_internal_ones_are_not_for_users() -> None:
    tables = [RIDER_ACCESS, DRIVER_ACCESS, TRIP_ACCESS, LOCATION_ACCESS, NOTIFICATION_ACCESS]
    rules = {path: rule for table in tables for path, rule in table.items()}
    for path, rule in rules.items():
        assert rule.services or rule.users, path
        assert len(rule.services) <= 2, path
    for internal in (
        "/rideshare.location.v1.LocationService/ReserveDriver",
        "/rideshare.location.v1.LocationService/ReserveDrivers",
        "/rideshare.location.v1.LocationService/NearestDrivers",
        "/rideshare.location.v1.LocationService/NearestDriversBatch",
        "/rideshare.location.v1.LocationService/GetTripDistance",
        "/rideshare.trip.v1.TripService/ListActiveAssignments",
        "/rideshare.driver.v1.DriverService/ListOnlineDrivers",
    ):
        assert not rules[internal].users and "edge" not in rules[internal].services


def in_call(caller: Caller | None) -> object:
    return caller_var.set(caller)


@pytest.mark.parametrize(
    ("caller", "readable"),
    [
        (Caller("edge", User("rider", "r-1")), True),
        (Caller("edge", User("rider", "r-2")), False),
        (Caller("edge", User("driver", "r-1")), False),  # same id, other role
        (Caller("edge", User("admin", "a")), True),
        (Caller("location"), True),  # a service as itself: the table vetted it
    ],
)
def test_may_read_is_the_owner_an_admin_or_a_service(caller: Caller, readable: bool) -> None:
    token = caller_var.set(caller)
    try:
        assert may_read("rider", "r-1") is readable
    finally:
        caller_var.reset(token)


def test_require_acting_as_refuses_another_user_and_admits_services() -> None:
    token = caller_var.set(Caller("edge", User("driver", "d-1")))
    try:
        require_acting_as("d-1", role="driver", field="driver_id")
        require_acting_as("d-1", field="user_id")
        with pytest.raises(NotActingAsError, match="driver_id"):
            require_acting_as("d-2", role="driver", field="driver_id")
        with pytest.raises(NotActingAsError):
            require_acting_as("d-1", role="rider", field="rider_id")
        assert not is_admin_call()
    finally:
        caller_var.reset(token)
    token = caller_var.set(Caller(OPERATOR))
    try:
        require_acting_as("anyone", role="rider", field="rider_id")
        assert is_admin_call()
    finally:
        caller_var.reset(token)


def test_the_internal_secret_is_created_once_private_and_apart_from_the_jwt_secret(
    tmp_path: Path,
) -> None:
    first = load_internal_secret(tmp_path, env={})
    path = tmp_path / INTERNAL_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_internal_secret(tmp_path, env={}) == first
    assert load_jwt_secret(tmp_path) != first
    given = "g" * 40
    assert load_internal_secret(tmp_path, env={"RIDESHARE_INTERNAL_SECRET": given}) == given
    with pytest.raises(SettingsError, match="RIDESHARE_INTERNAL_SECRET"):
        load_internal_secret(tmp_path, env={"RIDESHARE_INTERNAL_SECRET": "short"})
    path.write_text("short\n")
    with pytest.raises(SettingsError, match="shorter"):
        load_internal_secret(tmp_path, env={})
