"""How a setting naming one service's copies becomes a gRPC target and service config."""

from __future__ import annotations

import json

import pytest

from rideshare.addresses import channel_target
from rideshare.grpc_client import service_config
from rideshare.settings import SettingsError, env_addresses


@pytest.mark.parametrize(
    ("addresses", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("rider.internal:50051", "rider.internal:50051"),
        ("dns:///rider-headless:50051", "dns:///rider-headless:50051"),
        ("127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        (" 10.0.0.1:50051 , 10.0.0.2:50051 ", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ],
)
def test_a_setting_names_one_address_a_list_or_a_dns_name(addresses: str, target: str) -> None:
    assert channel_target(addresses) == target


@pytest.mark.parametrize(
    ("addresses", "complaint"),
    [
        ("", "no address"),
        ("127.0.0.1:1,rider:2", "dns:///"),
        ("127.0.0.1:1,127.0.0.1", "not host:port"),
        ("127.0.0.1:1,127.0.0.1:0", "not host:port"),
        ("127.0.0.1:1,127.0.0.1:70000", "not host:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,::1:2", "IPv6 address as"),
    ],
)
def test_a_list_that_grpc_cannot_take_is_refused_with_the_reason(
    addresses: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        channel_target(addresses)


def test_every_channel_balances_round_robin_and_retries_only_the_idempotent_methods() -> None:
    plain = json.loads(service_config())
    assert plain == {"loadBalancingConfig": [{"round_robin": {}}]}

    config = json.loads(service_config(["a.b.Svc/Get"]))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    [method_config] = config["methodConfig"]
    assert method_config["name"] == [{"service": "a.b.Svc", "method": "Get"}]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_an_address_setting_that_grpc_cannot_take_stops_the_process_naming_it() -> None:
    env = {"RIDESHARE_LOCATION_ADDR": "127.0.0.1:1,location:2"}
    with pytest.raises(SettingsError, match=r"RIDESHARE_LOCATION_ADDR: .*dns:///"):
        env_addresses("RIDESHARE_LOCATION_ADDR", "127.0.0.1:50054", env=env)
    env = {"RIDESHARE_LOCATION_ADDR": "127.0.0.1:1,127.0.0.1:2"}
    assert env_addresses("RIDESHARE_LOCATION_ADDR", "x", env=env) == "127.0.0.1:1,127.0.0.1:2"
    assert env_addresses("RIDESHARE_TRIP_ADDR", "", env={}) == ""
