"""The edge's limits that are pure code: whose address a request is, how deep a frame may
nest, what counts as a number, and the settings that name them."""

from __future__ import annotations

import os
from ipaddress import ip_network
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from edge.clientaddr import client_address, parse_networks
from edge.models import AddVehicleIn, CompleteIn, FareEstimateIn, PositionIn, RatingIn
from edge.settings import EdgeSettings
from edge.wire import MAX_DEPTH, FrameError, parse_frame, parse_position
from rideshare.settings import SettingsError

NOW_MS = 1_760_000_000_000
PROXIES = (ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32"))
ENV = {
    "RIDESHARE_REDIS_URL": "redis://127.0.0.1:1/0",
    "RIDESHARE_POSTGRES_DSN": "postgresql://u@127.0.0.1:2/db",
    "RIDESHARE_NATS_URL": "nats://127.0.0.1:3",
    "RIDESHARE_JWT_SECRET": "s" * 40,
}


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        # no trusted proxies: the header is ignored, whoever sends it
        ("127.0.0.1", ["6.6.6.6"], (), "127.0.0.1"),
        # a peer that is not a trusted proxy cannot name another client
        ("192.0.2.7", ["6.6.6.6"], PROXIES, "192.0.2.7"),
        ("10.1.2.3", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        # the client's own entries (left of what a trusted proxy appended) are never used
        ("10.1.2.3", ["6.6.6.6, 203.0.113.9"], PROXIES, "203.0.113.9"),
        # a chain of trusted proxies, in one header or several
        ("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.0.0.5"], PROXIES, "203.0.113.9"),
        ("127.0.0.1", ["6.6.6.6, 203.0.113.9", "10.0.0.5"], PROXIES, "203.0.113.9"),
        # a trusted proxy that sent no header: the peer
        ("10.1.2.3", [], PROXIES, "10.1.2.3"),
        # garbage where a trusted proxy's entry should be: the last address vouched for
        ("10.1.2.3", ["not-an-ip, 10.0.0.9"], PROXIES, "10.0.0.9"),
        ("10.1.2.3", ["unknown"], PROXIES, "10.1.2.3"),
        ("::1", ["2001:db8::1"], (ip_network("::1/128"),), "2001:db8::1"),
    ],
)
def test_the_client_is_the_rightmost_address_no_trusted_proxy_wrote(
    peer: str, forwarded: list[str], trusted: tuple[Any, ...], client: str
) -> None:
    assert client_address(peer, forwarded, trusted) == client


def test_trusted_proxies_are_read_from_the_environment() -> None:
    assert EdgeSettings.from_env(ENV).trusted_proxies == ()
    settings = EdgeSettings.from_env({**ENV, "RIDESHARE_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert settings.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("::1/128"))
    assert parse_networks("10.1.2.3/8") == (ip_network("10.0.0.0/8"),)


def test_a_bad_trusted_proxy_names_the_variable_and_the_value() -> None:
    with pytest.raises(SettingsError, match=r"RIDESHARE_TRUSTED_PROXIES.*'proxy\.local'"):
        EdgeSettings.from_env({**ENV, "RIDESHARE_TRUSTED_PROXIES": "10.0.0.1,proxy.local"})


def test_the_limits_have_small_defaults_and_environment_overrides() -> None:
    default = EdgeSettings.from_env(ENV)
    assert (default.max_body_bytes, default.ws_max_per_user, default.ws_flood_frames) == (
        64 * 1024,
        4,
        100,
    )
    tuned = EdgeSettings.from_env(
        {
            **ENV,
            "RIDESHARE_MAX_BODY_BYTES": "2048",
            "RIDESHARE_WS_MAX_PER_USER": "2",
            "RIDESHARE_WS_FLOOD_FRAMES": "7",
        }
    )
    assert (tuned.max_body_bytes, tuned.ws_max_per_user, tuned.ws_flood_frames) == (2048, 2, 7)
    with pytest.raises(SettingsError, match="RIDESHARE_WS_MAX_PER_USER"):
        EdgeSettings.from_env({**ENV, "RIDESHARE_WS_MAX_PER_USER": "0"})


@pytest.mark.parametrize(
    "text",
    [
        "[" * 4000,
        "{" * 4000,
        '{"type": "pong", "x": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}",
        '{"a":' * 2000,
        # escaped quotes do not hide the brackets after them
        '{"type": "pong", "s": "\\"", "x": ' + "[" * 100 + "]" * 100 + "}",
        # an escaped backslash does end the string before them
        '{"type": "pong", "s": "\\\\", "x": ' + "[" * 100 + "]" * 100 + "}",
        # an unterminated string does not hide the brackets before it
        "[" * 100 + '"' * 3,
    ],
)
def test_frames_nested_too_deep_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(FrameError) as refused:
        parse_frame(text, max_bytes=1_000_000)
    assert refused.value.code == "too_deep"


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "pong", "x": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}",
        '{"type": "pong", "s": "' + "[" * 1000 + '"}',  # brackets inside a string
        '{"type": "pong", "s": "\\"' + "[" * 1000 + '"}',  # ... after an escaped quote
        '{"type": "pong", "l": [' + "[], " * 500 + "[]]}",  # many, but shallow
    ],
)
def test_deep_enough_frames_and_brackets_in_strings_parse(text: str) -> None:
    assert parse_frame(text, max_bytes=1_000_000)["type"] == "pong"


def test_a_binary_frame_that_is_not_utf8_is_bad_json() -> None:
    with pytest.raises(FrameError) as refused:
        parse_frame(b"\xff\xfe{}", max_bytes=4096)
    assert refused.value.code == "bad_json"


@pytest.mark.parametrize("value", [10**400, -(10**400), True, "52.5", None, [52.5]])
def test_a_position_number_beyond_a_double_or_not_a_number_is_an_invalid_position(
    value: Any,
) -> None:
    with pytest.raises(FrameError) as refused:
        parse_position({"type": "position", "lat": value, "lng": 13.4}, now_ms=NOW_MS)
    assert refused.value.code == "invalid_position"


LATLNG = {"lat": 52.5, "lng": 13.4}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (PositionIn, {"lat": True, "lng": 13.4}),
        (PositionIn, {"lat": "52.5", "lng": 13.4}),
        (PositionIn, {"lat": 52.5, "lng": 13.4, "heading": False}),
        (PositionIn, {"lat": 52.5, "lng": 13.4, "ts_ms": 1.5e12}),
        (PositionIn, {"lat": 52.5, "lng": 13.4, "ts_ms": "1760000000000"}),
        (FareEstimateIn, {"pickup": {"lat": True, "lng": 13.4}, "dropoff": LATLNG}),
        (FareEstimateIn, {"pickup": LATLNG, "dropoff": {"lat": 52.5, "lng": "13"}}),
        (FareEstimateIn, {"pickup": LATLNG, "dropoff": LATLNG, "vehicle_class": 1}),
        (RatingIn, {"stars": True}),
        (RatingIn, {"stars": "5"}),
        (RatingIn, {"stars": 5.0}),
        (CompleteIn, {"distance_m": True}),
        (
            AddVehicleIn,
            {"make": "a", "model": "b", "plate": "c", "seats": "4", "vehicle_class": "xl"},
        ),
        (AddVehicleIn, {"make": 1, "model": "b", "plate": "c", "seats": 4, "vehicle_class": "xl"}),
    ],
)
def test_request_bodies_take_numbers_as_numbers_only(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_integers_are_numbers_where_a_number_is_expected() -> None:
    p = PositionIn.model_validate({"lat": 52, "lng": 13, "heading": 90})
    assert (p.lat, p.lng, p.heading) == (52.0, 13.0, 90.0)
    assert FareEstimateIn.model_validate({"pickup": LATLNG, "dropoff": {"lat": 1, "lng": 2}})


def test_the_edge_runs_one_worker_per_usable_core_unless_told() -> None:
    assert EdgeSettings.from_env(ENV).workers == len(os.sched_getaffinity(0))
    assert EdgeSettings.from_env({**ENV, "RIDESHARE_EDGE_WORKERS": "1"}).workers == 1
    for bad in ("0", "-2", "two", "257"):
        with pytest.raises(SettingsError, match="RIDESHARE_EDGE_WORKERS"):
            EdgeSettings.from_env({**ENV, "RIDESHARE_EDGE_WORKERS": bad})


def test_the_viewer_feed_settings_are_checked() -> None:
    tuned = EdgeSettings.from_env(
        {**ENV, "RIDESHARE_VIEWER_FRAMES_PER_S": "5", "RIDESHARE_VIEWER_MAX_DRIVERS": "100"}
    )
    assert (tuned.viewer_frames_per_s, tuned.viewer_max_drivers) == (5.0, 100)
    with pytest.raises(SettingsError, match="RIDESHARE_VIEWER_FRAMES_PER_S"):
        EdgeSettings.from_env({**ENV, "RIDESHARE_VIEWER_FRAMES_PER_S": "0"})
