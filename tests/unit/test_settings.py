"""Settings fail fast with a message naming the variable and the bad value."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge.settings import LoginLimits
from rideshare.secrets_dir import secret_file
from rideshare.settings import (
    InfraUrls,
    ServiceSettings,
    SettingsError,
    default_kdf_concurrency,
    env_bool,
    env_float,
    env_int,
    load_infra_urls,
    mask_url,
    service_settings,
)

URLS = {
    "RIDESHARE_REDIS_URL": "redis://127.0.0.1:1/0",
    "RIDESHARE_POSTGRES_DSN": "postgresql://u:secret@127.0.0.1:2/db",
    "RIDESHARE_NATS_URL": "nats://127.0.0.1:3",
    "RIDESHARE_INTERNAL_SECRET": "internal-" + "i" * 32,  # else read from a data directory
}


def test_the_internal_secret_is_read_from_the_environment_and_never_shown() -> None:
    settings = service_settings("trip", env=URLS)
    assert settings.internal_secret == URLS["RIDESHARE_INTERNAL_SECRET"]
    assert "internal-" not in repr(settings)


def test_integer_variable_that_is_not_a_number_names_variable_and_value() -> None:
    with pytest.raises(SettingsError, match=r"RIDESHARE_TRIP_PORT='abc' is not an integer"):
        env_int("RIDESHARE_TRIP_PORT", 1, env={"RIDESHARE_TRIP_PORT": "abc"})


def test_integer_out_of_range_is_rejected() -> None:
    with pytest.raises(SettingsError, match="above the maximum 65535"):
        env_int("P", 1, maximum=65535, env={"P": "70000"})


def test_blank_variable_means_default() -> None:
    assert env_int("P", 7, env={"P": "  "}) == 7


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_float_must_be_finite(raw: str) -> None:
    with pytest.raises(SettingsError, match="not a finite number"):
        env_float("X", 1.0, env={"X": raw})


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("YES", True), ("off", False)])
def test_booleans_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    assert env_bool("B", not expected, env={"B": raw}) is expected


def test_boolean_rejects_anything_else() -> None:
    with pytest.raises(SettingsError, match=r"B='maybe' is not a boolean"):
        env_bool("B", False, env={"B": "maybe"})


def test_passwords_never_show_in_repr() -> None:
    urls = InfraUrls(
        redis_url="redis://:hunter2@h:1/0",
        postgres_dsn=URLS["RIDESHARE_POSTGRES_DSN"],
        nats_url="nats://h:3",
    )
    assert "secret" not in repr(urls)
    assert "hunter2" not in repr(urls)
    assert mask_url("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


def test_service_settings_read_ports_from_environment() -> None:
    env = {**URLS, "RIDESHARE_TRIP_PORT": "6000", "RIDESHARE_LOG_LEVEL": "debug"}
    settings = service_settings("trip", env=env)
    assert settings.grpc_port == 6000
    assert settings.metrics_port == 9153
    assert settings.log_level == "DEBUG"
    assert settings.infra.nats_url == "nats://127.0.0.1:3"


def test_infra_urls_come_from_the_data_dir_when_not_given(tmp_path: Path) -> None:
    (tmp_path / "infra.json").write_text(json.dumps({k.lower()[10:]: v for k, v in URLS.items()}))
    urls = load_infra_urls(tmp_path, env={"RIDESHARE_NATS_URL": "nats://other:4"})
    assert urls.redis_url == URLS["RIDESHARE_REDIS_URL"]
    assert urls.nats_url == "nats://other:4"


def test_missing_infra_says_how_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="rideshare infra up"):
        load_infra_urls(tmp_path, env={})


def test_password_hashing_limits_default_to_one_kdf_per_cpu_and_are_read_from_env() -> None:
    default = service_settings("rider", env=URLS)
    assert default.kdf_concurrency == default_kdf_concurrency() >= 1
    assert default.kdf_queue == 32
    tuned = service_settings(
        "rider", env={**URLS, "RIDESHARE_KDF_CONCURRENCY": "3", "RIDESHARE_KDF_QUEUE": "0"}
    )
    assert (tuned.kdf_concurrency, tuned.kdf_queue) == (3, 0)
    with pytest.raises(SettingsError, match="RIDESHARE_KDF_CONCURRENCY=0 is below"):
        service_settings("rider", env={**URLS, "RIDESHARE_KDF_CONCURRENCY": "0"})


def test_login_limits_are_read_from_env_and_a_lockout_cap_below_the_lock_is_refused() -> None:
    assert LoginLimits.from_env({}) == LoginLimits()
    limits = LoginLimits.from_env(
        {
            "RIDESHARE_LOGINS_PER_MIN_PER_IP": "3",
            "RIDESHARE_LOGIN_BURST_PER_PHONE": "2",
            "RIDESHARE_LOGIN_LOCKOUT_FAILURES": "4",
            "RIDESHARE_LOGIN_LOCKOUT_S": "30",
            "RIDESHARE_SIGNUPS_PER_MIN_PER_IP": "0.25",
        }
    )
    assert (limits.logins_per_min_per_ip, limits.login_burst_per_phone) == (3.0, 2)
    assert (limits.lockout_failures, limits.lockout_s, limits.signups_per_min_per_ip) == (
        4,
        30.0,
        0.25,
    )
    with pytest.raises(SettingsError, match="RIDESHARE_LOGIN_BURST_PER_IP=0 is below"):
        LoginLimits.from_env({"RIDESHARE_LOGIN_BURST_PER_IP": "0"})
    with pytest.raises(SettingsError, match="RIDESHARE_LOGIN_LOCKOUT_MAX_S"):
        LoginLimits.from_env(
            {"RIDESHARE_LOGIN_LOCKOUT_S": "600", "RIDESHARE_LOGIN_LOCKOUT_MAX_S": "60"}
        )


LOGINS = {"redis": {"location": "loc-pw", "edge": "edge-pw"}, "nats": {"trip": "trip-pw"}}


def test_each_service_gets_its_own_users_and_none_where_it_has_none() -> None:
    admin = InfraUrls(
        redis_url="redis://admin:root-pw@127.0.0.1:1/3",
        postgres_dsn=URLS["RIDESHARE_POSTGRES_DSN"],
        nats_url="nats://admin:root-pw@127.0.0.1:3",
        logins=LOGINS,
    )
    location = ServiceSettings(name="location", infra=admin).infra
    assert location.redis_url == "redis://location:loc-pw@127.0.0.1:1/3"
    assert location.nats_url == "nats://127.0.0.1:3"  # no NATS user for it here: no password
    assert location.postgres_dsn == URLS["RIDESHARE_POSTGRES_DSN"]
    trip = ServiceSettings(name="trip", infra=admin).infra
    assert trip.redis_url == "redis://127.0.0.1:1/3"
    assert trip.nats_url == "nats://trip:trip-pw@127.0.0.1:3"
    assert "root-pw" not in json.dumps([location.to_json(), trip.to_json()])
    assert "pw" not in repr(location)


def test_urls_without_logins_are_used_as_given() -> None:
    given = InfraUrls(
        redis_url="redis://op:theirs@h:1/0",
        postgres_dsn=URLS["RIDESHARE_POSTGRES_DSN"],
        nats_url="nats://op:theirs@h:3",
    )
    assert ServiceSettings(name="location", infra=given).infra == given


def test_a_url_given_in_the_environment_wins_over_the_recorded_logins(tmp_path: Path) -> None:
    recorded = {
        "redis_url": "redis://admin:a@127.0.0.1:1/0",
        "postgres_dsn": URLS["RIDESHARE_POSTGRES_DSN"],
        "nats_url": "nats://admin:a@127.0.0.1:3",
        "logins": {"redis": {"location": "loc-pw"}, "nats": {"location": "nats-pw"}},
    }
    (tmp_path / "infra.json").write_text(json.dumps(recorded))
    env = {"RIDESHARE_NATS_URL": "nats://op:theirs@other:4"}
    urls = service_settings("location", env={**env, "RIDESHARE_DATA_DIR": str(tmp_path)}).infra
    assert urls.redis_url == "redis://location:loc-pw@127.0.0.1:1/0"
    assert urls.nats_url == "nats://op:theirs@other:4"


def test_a_secret_file_is_made_once_private_and_read_back(tmp_path: Path) -> None:
    first = secret_file(tmp_path / "data", "some-secret", 24)
    path = tmp_path / "data" / "some-secret"
    assert len(first) == 32  # 24 bytes as URL-safe base64
    assert first.replace("-", "").replace("_", "").isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secret_file(tmp_path / "data", "some-secret", 24) == first
    assert secret_file(tmp_path / "data", "another", 24) != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["another", "some-secret"]
