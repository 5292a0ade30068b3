"""The supervisor against real service processes: a killed service comes back, a frozen one is
killed and comes back, a crash loop is given up on with the rest left running."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rideshare.infra import EmbeddedInfra, free_port
from rideshare.settings import InfraUrls
from rideshare.supervisor import RestartPolicy, Supervisor, read_status
from tests.helpers import eventually

FAST = RestartPolicy(
    backoff_initial_s=0.2,
    backoff_max_s=1.0,
    max_restarts=2,
    stable_after_s=600.0,
    hung_after_s=3.0,
    check_interval_s=0.2,
)


def _env(unique_name: str, **extra: str) -> dict[str, str]:
    return {
        "RIDESHARE_LOCATION_PORT": str(free_port()),
        "RIDESHARE_LOCATION_METRICS_PORT": "0",
        "RIDESHARE_LOCATION_CONSUMER": unique_name,
        "RIDESHARE_SHUTDOWN_GRACE_S": "1",
        **extra,
    }


@pytest.fixture
async def supervisor(
    infra: InfraUrls, redis_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[Supervisor]:
    urls = InfraUrls(redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url)
    sup = Supervisor(
        urls,
        extra_env=_env(unique_name),
        policy=FAST,
        status_file=tmp_path / "supervisor.json",
        ready_timeout_s=60.0,
    )
    try:
        yield sup
    finally:
        await sup.stop_all(grace_s=5.0)


async def _pid_changes(sup: Supervisor, name: str, old: int) -> int:
    """Wait until a new copy of ``name`` is up; its pid."""

    def new_copy_up() -> bool:
        record = sup.records[name]
        return record.pid != old and record.state == "up"

    await eventually(new_copy_up, timeout_s=60)
    pid = sup.records[name].pid
    assert pid is not None
    return pid


async def test_a_killed_service_is_restarted_and_the_restart_is_counted(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    await supervisor.spawn_all(["location"])
    async with supervisor.supervising():
        await supervisor.wait_all_up(timeout_s=60)
        first = supervisor.child("location").process.pid

        os.kill(first, signal.SIGKILL)
        second = await _pid_changes(supervisor, "location", first)

        assert await supervisor.child("location").healthy()
        record = supervisor.records["location"]
        assert record.restarts == 1
        assert record.last_exit == "killed by SIGKILL"
        assert [(name, kind) for name, kind, _ in supervisor.recoveries] == [
            ("location", "service")
        ]
        written = read_status(tmp_path)["location"]
        assert written["pid"] == second
        assert written["restarts"] == 1
        assert written["state"] == "up"


async def test_a_frozen_service_is_killed_and_started_again(supervisor: Supervisor) -> None:
    await supervisor.spawn_all(["location"])
    async with supervisor.supervising():
        await supervisor.wait_all_up(timeout_s=60)
        frozen = supervisor.child("location").process.pid
        os.kill(frozen, signal.SIGSTOP)
        try:
            await _pid_changes(supervisor, "location", frozen)
        finally:
            # Should the supervisor not have killed it, the test must not leave it frozen.
            if supervisor.child("location").process.pid == frozen:
                os.kill(frozen, signal.SIGCONT)
        assert supervisor.records["location"].restarts == 1
        assert await supervisor.child("location").healthy()


async def test_a_crash_loop_is_given_up_on_and_the_rest_keeps_running(
    infra: InfraUrls, redis_url: str, unique_name: str, tmp_path: Path
) -> None:
    urls = InfraUrls(redis_url=redis_url, postgres_dsn=infra.postgres_dsn, nats_url=infra.nats_url)
    # The location service reads this setting as it starts and exits on the bad value.
    broken = Supervisor(
        urls,
        extra_env=_env(unique_name, RIDESHARE_DRIVER_STALE_S="not-a-number"),
        policy=FAST,
        status_file=tmp_path / "supervisor.json",
    )
    try:
        await broken.spawn_all(["location"])
        async with broken.supervising():
            with pytest.raises(RuntimeError, match="could not start: location"):
                await broken.wait_all_up(timeout_s=60)
            record = broken.records["location"]
            assert record.state == "failed"
            assert record.restarts == FAST.max_restarts
            assert record.last_exit is not None  # "exit code 1": it says what went wrong
            assert read_status(tmp_path)["location"]["state"] == "failed"
    finally:
        await broken.stop_all(grace_s=5.0)


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=4.0)
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_killed_servers_are_started_again_and_the_service_reconnects(
    outage_infra: EmbeddedInfra, unique_name: str, tmp_path: Path
) -> None:
    urls = outage_infra.urls
    assert urls is not None
    sup = Supervisor(
        urls,
        extra_env=_env(unique_name),
        servers=outage_infra,
        policy=FAST,
        status_file=tmp_path / "supervisor.json",
    )
    try:
        await sup.spawn_all(["location"])
        async with sup.supervising():
            await sup.wait_all_up(timeout_s=60)
            for server in ("redis", "nats", "postgres"):
                old = outage_infra.pid(server)
                os.kill(old, signal.SIGKILL)
                await _pid_changes(sup, server, old)
                assert outage_infra.dead() == []
                assert read_status(tmp_path)[server]["restarts"] == 1
            # The service was never restarted: it rode the outages out and serves again.
            await eventually(sup.child("location").healthy, timeout_s=60)
            assert sup.records["location"].restarts == 0
            assert [name for name, _, _ in sup.recoveries] == ["redis", "nats", "postgres"]
    finally:
        await sup.stop_all(grace_s=5.0)


async def test_a_frozen_server_is_killed_and_started_again(
    outage_infra: EmbeddedInfra, tmp_path: Path
) -> None:
    urls = outage_infra.urls
    assert urls is not None
    sup = Supervisor(
        urls, servers=outage_infra, policy=FAST, status_file=tmp_path / "supervisor.json"
    )
    async with sup.supervising():
        frozen = outage_infra.pid("redis")
        os.kill(frozen, signal.SIGSTOP)
        try:
            await _pid_changes(sup, "redis", frozen)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)  # should the supervisor not have killed it
        assert sup.records["redis"].last_exit == "killed: not answering"
        assert sup.records["redis"].restarts == 1
        assert await outage_infra.answers("redis")
