"""Server lists in URLs: NATS clusters, PostgreSQL primary + standby, and what the settings
make of them (pure: no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rideshare.nats_cluster import nats_servers, node_config, servers_url
from rideshare.pg_standby import failover_dsn, host_dsns
from rideshare.settings import INFRA_FILE, InfraUrls, SettingsError, load_infra_urls, mask_url


def test_one_login_for_several_hosts_gives_each_host_that_login() -> None:
    url = servers_url("admin", "pw", [4222, 4223, 4224])

    assert url == "nats://admin:pw@127.0.0.1:4222,127.0.0.1:4223,127.0.0.1:4224"
    assert nats_servers(url) == [
        "nats://admin:pw@127.0.0.1:4222",
        "nats://admin:pw@127.0.0.1:4223",
        "nats://admin:pw@127.0.0.1:4224",
    ]


def test_whole_urls_separated_by_commas_are_taken_as_they_are() -> None:
    url = "nats://a:1@h1:4222, tls://b:2@h2:4222"

    assert nats_servers(url) == ["nats://a:1@h1:4222", "tls://b:2@h2:4222"]


def test_a_single_url_is_a_list_of_one() -> None:
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_an_empty_nats_url_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        nats_servers(" , ")


def test_each_service_gets_its_own_login_on_every_node() -> None:
    urls = InfraUrls(
        redis_url="redis://admin:a@127.0.0.1:1/0",
        postgres_dsn="postgresql://u:p@127.0.0.1:2/db",
        nats_url=servers_url("admin", "secret", [4222, 4223]),
        logins={"nats": {"trip": "t-pw"}},
    )

    servers = nats_servers(urls.for_service("trip").nats_url)

    assert servers == ["nats://trip:t-pw@127.0.0.1:4222", "nats://trip:t-pw@127.0.0.1:4223"]


def test_no_password_of_a_server_list_shows_when_masked() -> None:
    masked = mask_url("nats://a:one@h1:4222,nats://b:two@h2:4222")

    assert "one" not in masked and "two" not in masked
    assert masked == "nats://a:***@h1:4222,nats://b:***@h2:4222"


def test_every_node_routes_to_every_node_and_advertises_none() -> None:
    config = node_config(
        name="nats-2",
        authorization={"users": []},
        store_dir="/data/nats-2",
        route_port=6223,
        route_ports=[6222, 6223, 6224],
    )

    cluster = config["cluster"]
    assert isinstance(cluster, dict)
    assert cluster["listen"] == "127.0.0.1:6223"
    assert cluster["routes"] == [f"nats-route://127.0.0.1:{p}" for p in (6222, 6223, 6224)]
    assert cluster["no_advertise"] is True
    assert config["server_name"] == "nats-2"


def test_a_failover_dsn_names_both_hosts_and_wants_the_one_taking_writes() -> None:
    dsn = failover_dsn(["postgresql://u:p@127.0.0.1:5432/db", "postgresql://u:p@127.0.0.1:5433/db"])

    assert dsn == (
        "postgresql://u:p@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write"
    )
    assert host_dsns(dsn) == [
        "postgresql://u:p@127.0.0.1:5432/db",
        "postgresql://u:p@127.0.0.1:5433/db",
    ]


def test_the_replica_count_comes_from_the_environment_else_the_infra_file(
    tmp_path: Path,
) -> None:
    record = {
        "redis_url": "redis://127.0.0.1:1/0",
        "postgres_dsn": "postgresql://127.0.0.1:2/db",
        "nats_url": "nats://127.0.0.1:3",
        "jetstream_replicas": 3,
    }
    (tmp_path / INFRA_FILE).write_text(json.dumps(record))

    assert load_infra_urls(tmp_path, env={}).jetstream_replicas == 3
    given = {"RIDESHARE_JETSTREAM_REPLICAS": "1"}
    assert load_infra_urls(tmp_path, env=given).jetstream_replicas == 1
    (tmp_path / INFRA_FILE).write_text(json.dumps({**record, "jetstream_replicas": None}))
    assert load_infra_urls(tmp_path, env={}).jetstream_replicas == 1


def test_a_replica_count_out_of_range_names_the_variable(tmp_path: Path) -> None:
    env = {
        "RIDESHARE_REDIS_URL": "redis://127.0.0.1:1/0",
        "RIDESHARE_POSTGRES_DSN": "postgresql://127.0.0.1:2/db",
        "RIDESHARE_NATS_URL": "nats://127.0.0.1:3",
        "RIDESHARE_JETSTREAM_REPLICAS": "7",
    }
    with pytest.raises(SettingsError, match="RIDESHARE_JETSTREAM_REPLICAS"):
        load_infra_urls(tmp_path, env=env)
