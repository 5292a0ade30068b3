"""`rideshare up` as a person runs it: everything starts, answers, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rideshare.supervisor import SERVICE_ORDER, read_status
from scripts.chaos import system_env

BIN = Path(sys.executable).parent


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.update(children)
        frontier.extend(children)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    # tmp_path is 0700 and root's: PostgreSQL, run as nobody, must start from there anyway.
    return system_env(tmp_path / "data")


def rideshare(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rideshare"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_up_starts_everything_refuses_a_second_copy_and_stops_cleanly_on_sigint(
    up_env: dict[str, str],
) -> None:
    launcher = subprocess.Popen(
        [str(BIN / "rideshare"), "up"],
        env=up_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while rideshare("status", env=up_env).returncode != 0:
            assert launcher.poll() is None, launcher.communicate()[0]
            assert time.monotonic() < deadline, "rideshare up did not become healthy in 120 s"
            time.sleep(0.5)

        status = rideshare("status", env=up_env).stdout
        for name in ("redis", "postgres", "nats", *SERVICE_ORDER):
            assert f"{name}" in status

        location_port = up_env["RIDESHARE_LOCATION_PORT"]
        listing = subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{location_port}", "list"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        assert "rideshare.location.v1.LocationService" in listing
        assert "grpc.health.v1.Health" in listing
        assert "grpc.reflection.v1.ServerReflection" in listing

        # any other method wants a service token, which `rideshare token --grpc` prints
        call = [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-d",
            '{"driver_id": "nobody"}',
            f"127.0.0.1:{location_port}",
            "rideshare.location.v1.LocationService/GetPosition",
        ]
        refused = subprocess.run(call, capture_output=True, text=True, timeout=20, check=False)
        assert "Unauthenticated" in refused.stdout + refused.stderr
        operator = rideshare("token", "--grpc", env=up_env).stdout.strip()
        bearer = ["-H", f"authorization: Bearer {operator}"]
        found = subprocess.run(
            [*call[:2], *bearer, *call[2:]], capture_output=True, text=True, timeout=20, check=False
        )
        assert "NotFound" in found.stdout + found.stderr  # through: no position for "nobody"

        # `rideshare token` signs with the secret of the running edge, found by the data dir
        admin = rideshare("token", env=up_env).stdout.strip()
        edge = f"http://127.0.0.1:{up_env['RIDESHARE_EDGE_PORT']}"
        drivers = httpx.get(
            f"{edge}/v1/admin/drivers",
            params={"bbox": "-85,-180,85,180"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert drivers.status_code == 200, drivers.text

        second = rideshare("up", env=up_env)
        assert second.returncode == 2
        assert "already running" in second.stderr

        # A service killed under it is started again, and status says so.
        data_dir = Path(up_env["RIDESHARE_DATA_DIR"])
        killed = read_status(data_dir)["location"]["pid"]
        assert isinstance(killed, int)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not (
            read_status(data_dir)["location"]["pid"] != killed
            and rideshare("status", env=up_env).returncode == 0
        ):
            assert launcher.poll() is None, "up stopped after a service was killed"
            assert time.monotonic() < deadline, "location was not restarted within 120 s"
            time.sleep(0.5)
        status_lines = rideshare("status", env=up_env).stdout.splitlines()
        location_line = next(line for line in status_lines if line.startswith("location"))
        assert "restarts=1" in location_line
        assert "last_exit='killed by SIGKILL'" in location_line

        children = descendants(launcher.pid)
        assert len(children) >= 3 + len(SERVICE_ORDER)
        # No password on any command line (every local user may read them in /proc).
        passwords = [p.read_text().strip() for p in (data_dir / "secrets").iterdir()]
        assert len(passwords) >= 2 + 2 + len(SERVICE_ORDER)  # admins, valkey users, nats users
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            assert not [p for p in passwords if p in cmdline], cmdline
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)

    assert launcher.returncode == 0, output
    assert not [p for p in passwords if p in output], "a password was logged"
    assert f"http://127.0.0.1:{up_env['RIDESHARE_EDGE_PORT']}/viewer#token=" in output, output
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []
    assert rideshare("status", env=up_env).returncode != 0
