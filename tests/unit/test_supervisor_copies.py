"""Where the supervisor puts the copies of a service (rideshare up --cluster): each on a port
of its own, and every caller given the list of all of them."""

from __future__ import annotations

import pytest

from rideshare.settings import InfraUrls
from rideshare.supervisor import Supervisor

URLS = InfraUrls(
    redis_url="redis://r:6379/0", postgres_dsn="postgresql://p/db", nats_url="nats://n:4222"
)
PORTS = {
    "RIDESHARE_TRIP_PORT": "41001",
    "RIDESHARE_EDGE_PORT": "41002",
    "RIDESHARE_TRIP_METRICS_PORT": "41003",
}


def test_one_copy_keeps_the_service_name_and_its_configured_port() -> None:
    supervisor = Supervisor(URLS, extra_env=PORTS)
    assert supervisor.copy_names("trip") == ["trip"]
    env = supervisor._env("trip")
    assert env["RIDESHARE_TRIP_ADDR"] == "127.0.0.1:41001"


def test_copies_get_ports_of_their_own_and_every_address_list_names_them_all() -> None:
    supervisor = Supervisor(URLS, extra_env=PORTS, copies=2)
    assert supervisor.copy_names("edge") == ["edge-1", "edge-2"]
    supervisor._place(["trip", "edge"])

    trip = supervisor.addresses("trip")
    assert trip[0] == "127.0.0.1:41001"  # copy 1 where a single trip service would be
    assert len(set(trip)) == 2
    edges = supervisor.addresses("edge")
    assert edges[0] == "127.0.0.1:41002" and len(set(edges + trip)) == 4

    one, two = supervisor._env("trip-1"), supervisor._env("trip-2")
    assert one["RIDESHARE_TRIP_PORT"] == "41001"
    assert f"127.0.0.1:{two['RIDESHARE_TRIP_PORT']}" == trip[1]
    assert two["RIDESHARE_TRIP_METRICS_PORT"] not in ("41003", "0")  # no clash on metrics
    for env in (one, two, supervisor._env("edge-2")):
        assert env["RIDESHARE_TRIP_ADDR"] == ",".join(trip)
        assert env["RIDESHARE_EDGE_ADDR"] == ",".join(edges)


def test_placing_again_keeps_the_ports_a_restarted_copy_comes_back_on() -> None:
    supervisor = Supervisor(URLS, extra_env=PORTS, copies=2)
    supervisor._place(["trip"])
    before = supervisor.addresses("trip")
    supervisor._place(["trip", "edge"])
    assert supervisor.addresses("trip") == before


def test_zero_copies_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(URLS, copies=0)
