"""A chaos run: the whole system under simulated riders and drivers while every process dies.

    python -m scripts.chaos [--seed 7] [--drivers 16 --riders 10 --rate 1.0] [--no-faults]
    python -m scripts.chaos --cluster [...]

Starts ``rideshare up`` in a data directory of its own (free ports, short reliability limits),
runs the simulator against its edge, and meanwhile ``kill -9``s every service and every server
once, one after another, and freezes one service with SIGSTOP for longer than its health limit.
After each fault it waits until the system is healthy again and prints how long that took.

``--cluster`` runs ``rideshare up --cluster`` (two copies of every service on a NATS cluster, a
Valkey Cluster and a PostgreSQL primary + standby) with one simulator on each edge copy (a
rider on one edge is matched with a driver on the other), and kills, one at a time, the NATS
stream leader, a Valkey master, the PostgreSQL primary (then ``rideshare failover postgres``
promotes the standby), one copy of each service and one edge copy. For the servers it also
prints how long the layer took to carry on without the node (a new stream leader, a replica
promoted, the standby promoted) before everything is healthy again.
When the simulation is over it looks into the stores themselves:

- no trip is live without progress for longer than the policy allows;
- no driver was ever on two trips at once;
- no outbox row is left unsent;
- no notification is duplicated or missing (every event in the stream that makes one has it);
- the location index agrees with the driver and trip services;
- every 5xx the apps saw is a 503/504 inside a fault window.

Exit status 0 when every check held, 1 when one broke, 2 when the system would not start.
``--no-faults`` runs the same seed without faults, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg

from notification.domain import plan
from notification.templates import TEMPLATES
from notification.wire import facts_of
from protos.events import payload_type
from rideshare.infra import free_port
from rideshare.infra_cluster import node_states
from rideshare.redis_client import RedisClient, open_redis
from rideshare.settings import ONE_ADDRESS_LOGIN_LIMITS, SERVICE_PORTS, load_infra_urls
from rideshare.supervisor import Health, probe_service, read_status

SERVICES = ("rider", "driver", "location", "trip", "notification", "edge")
SERVERS = ("redis", "postgres", "nats")
# One kill -9 each, in this order, then one freeze: services and servers interleaved so that
# every kind of loss lands while trips are in every state.
FAULTS: tuple[tuple[str, str], ...] = (
    ("kill", "location"),
    ("kill", "redis"),
    ("kill", "trip"),
    ("kill", "rider"),
    ("kill", "postgres"),
    ("kill", "driver"),
    ("kill", "notification"),
    ("kill", "nats"),
    ("kill", "edge"),
    ("freeze", "trip"),
)
CLUSTER_FAULTS: tuple[tuple[str, str], ...] = (
    ("kill", "nats:leader"),  # resolved to a node when it strikes (_resolve)
    ("kill", "valkey:master"),
    ("failover", "postgres"),
    ("kill", "location-2"),
    ("kill", "trip-1"),
    ("kill", "rider-2"),
    ("kill", "driver-1"),
    ("kill", "notification-2"),
    ("kill", "edge-2"),
)
LIVE_STATES = ("REQUESTED", "DISPATCHING", "ACCEPTED", "ARRIVED", "IN_PROGRESS")
OUTBOX_SCHEMAS = ("rider", "driver", "trip")
LOCATION_PREFIX = "loc:{0}:"  # the location service's default prefix, its one shard

# Short limits so that a run of a few minutes exercises every rule: the supervisor's, and the
# trip clocks (trip/liveness.py) that end or re-dispatch a trip whose apps went quiet.
TRIP_MAX_LIFE_S = 240
CHAOS_ENV = {
    "RIDESHARE_SUPERVISOR_HUNG_S": "6",
    "RIDESHARE_SUPERVISOR_BACKOFF_MAX_S": "2",
    "RIDESHARE_SHUTDOWN_GRACE_S": "1",
    "RIDESHARE_DISPATCH_MAX_WAIT_S": "60",
    "RIDESHARE_DISPATCH_LIMIT_S": "120",
    "RIDESHARE_DRIVER_SILENT_S": "20",
    "RIDESHARE_PICKUP_LIMIT_S": "120",
    "RIDESHARE_BOARDING_WAIT_S": "90",
    "RIDESHARE_RIDE_SILENT_FLAG_S": "20",
    "RIDESHARE_RIDE_SILENT_END_S": "45",
    "RIDESHARE_TRIP_MAX_LIFE_S": str(TRIP_MAX_LIFE_S),
    "RIDESHARE_SWEEP_POLL_S": "1",
}
# No trip may stay live without a transition past the longest of those clocks, plus slack
# for a sweeper round on a busy machine.
STUCK_LIMIT_S = TRIP_MAX_LIFE_S + 30.0


@dataclass
class Fault:
    action: str
    target: str
    at: float  # wall clock
    healthy_after_s: float | None = None
    process: str = ""  # the process hit, when ``target`` names a role ("nats:leader")
    taken_over_after_s: float | None = None  # a server's layer carrying on without it


@dataclass
class Run:
    data_dir: Path
    env: dict[str, str]
    edge_urls: list[str]
    faults: list[Fault] = field(default_factory=list)


def system_env(data_dir: Path) -> dict[str, str]:
    """The environment for a ``rideshare up`` of its own: embedded servers under ``data_dir``
    (any URLs in this environment dropped), every service on a free port, no metrics ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")
    }
    for name in [*SERVICE_PORTS, "edge"]:
        env[f"RIDESHARE_{name.upper()}_PORT"] = str(free_port())
        env[f"RIDESHARE_{name.upper()}_METRICS_PORT"] = "0"
    env["RIDESHARE_DATA_DIR"] = str(data_dir)
    # the simulated apps all sign up and log in from this machine's address
    return {**ONE_ADDRESS_LOGIN_LIMITS, **env}


def _services(records: dict[str, dict[str, object]]) -> list[tuple[str, str, int]]:
    """(process, service, port) of every service process (each copy) the launcher runs."""
    found = []
    for name, record in sorted(records.items()):
        service, port = record.get("service"), record.get("port")
        if record.get("kind") == "service" and isinstance(service, str) and isinstance(port, int):
            found.append((name, service, port))
    return found


async def _all_healthy(records: dict[str, dict[str, object]]) -> bool:
    services = _services(records)
    healths = await asyncio.gather(*(probe_service(s, port) for _, s, port in services))
    return bool(services) and all(h is Health.SERVING for h in healths)


async def _wait_healthy(data_dir: Path, *, timeout_s: float) -> float:
    """Seconds until every service answers SERVING and the supervisor has everything up
    (a failed-over primary, retired, stays down)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        records = read_status(data_dir)
        supervised_up = bool(records) and all(
            r.get("state") in ("up", "retired") for r in records.values()
        )
        if supervised_up and await _all_healthy(records):
            return time.monotonic() - began
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the system was not healthy within {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def _system(data_dir: Path, log: IO[bytes], *, cluster: bool = False) -> AsyncIterator[Run]:
    env = system_env(data_dir) | CHAOS_ENV
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rideshare", "up", *(["--cluster"] if cluster else []),
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        took = await _wait_healthy(data_dir, timeout_s=240 if cluster else 180)
        print(f"system healthy {took:.1f} s after start", flush=True)
        edges = [p for _, s, p in _services(read_status(data_dir)) if s == "edge"]
        yield Run(data_dir, env, [f"http://127.0.0.1:{port}" for port in edges])
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(60):
                await launcher.wait()
        except TimeoutError:
            launcher.kill()
            await launcher.wait()


def _pid(data_dir: Path, name: str) -> int:
    pid = read_status(data_dir)[name]["pid"]
    assert isinstance(pid, int)
    return pid


async def _roles(run: Run) -> dict[str, str]:
    """Role of every node of the cluster profile now ("stream leader", "master", ...)."""
    return {node.name: node.role for node in await node_states(load_infra_urls(run.data_dir))}


async def _resolve(run: Run, target: str, *, timeout_s: float = 60.0) -> str:
    """The process ``target`` names: itself, or for "nats:leader" / "valkey:master" the node
    holding that role now."""
    if ":" not in target:
        return target
    prefix, role = target.split(":")
    wanted = "stream leader" if role == "leader" else role
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, now in sorted((await _roles(run)).items()):
            if name.startswith(prefix) and now == wanted:
                return name
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no {target} within {timeout_s:.0f} s")


async def _taken_over(run: Run, process: str, *, timeout_s: float = 60.0) -> None:
    """Until the layer of server ``process`` carries on without it: another stream leader,
    three Valkey masters again (a replica promoted, or the node back first), the standby
    answering as the primary."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        roles = await _roles(run)
        if process.startswith("nats"):
            done = any(r == "stream leader" for n, r in roles.items() if n != process)
        elif process.startswith("valkey"):
            done = sum(r == "master" for n, r in roles.items() if n.startswith("valkey")) >= 3
        else:
            done = roles.get("postgres-standby") == "primary"
        if done:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the layer of {process} did not carry on within {timeout_s:.0f} s")


async def _fail_over_postgres(run: Run) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rideshare", "failover", "postgres",
        env=run.env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(120):
        if await process.wait() != 0:
            raise RuntimeError("rideshare failover postgres failed")


async def _inject(run: Run, action: str, target: str, *, hung_s: float) -> Fault:
    fault = Fault(action, target, time.time())
    fault.process = await _resolve(run, target)
    pid = _pid(run.data_dir, fault.process)
    began = time.monotonic()
    os.kill(pid, signal.SIGSTOP if action == "freeze" else signal.SIGKILL)
    try:
        if action == "failover":
            await _fail_over_postgres(run)
        if fault.process in await _roles(run) or action == "failover":
            await _taken_over(run, fault.process)
            fault.taken_over_after_s = time.monotonic() - began  # from the kill
        # The supervisor must notice on its own: wait until the old pid is gone from its
        # records (or, failed over, the process is retired), then until everything is healthy.
        deadline = began + hung_s + 60
        while time.monotonic() < deadline:
            record = read_status(run.data_dir)[fault.process]
            if record["pid"] != pid or record.get("state") == "retired":
                break
            await asyncio.sleep(0.1)
        await _wait_healthy(run.data_dir, timeout_s=max(1.0, deadline - time.monotonic()))
    finally:
        if action == "freeze":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # in case it was not killed: leave nothing frozen
    fault.healthy_after_s = time.monotonic() - began
    layer = (
        f", its layer carried on after {fault.taken_over_after_s:5.1f} s"
        if fault.taken_over_after_s is not None
        else ""
    )
    print(
        f"  {action:<8} {fault.process:<16} healthy again after {fault.healthy_after_s:5.1f} s"
        f"{layer}",
        flush=True,
    )
    return fault


async def _faults(
    run: Run, faults: Sequence[tuple[str, str]], *, warmup_s: float, pause_s: float
) -> None:
    await asyncio.sleep(warmup_s)
    hung_s = float(run.env["RIDESHARE_SUPERVISOR_HUNG_S"])
    for action, target in faults:
        run.faults.append(await _inject(run, action, target, hung_s=hung_s))
        await asyncio.sleep(pause_s)


async def _simulate(
    run: Run, args: argparse.Namespace, summary_path: Path, log: IO[bytes], *, edge: int = 0
) -> int:
    """One simulator on edge copy ``edge``; with several edges each gets its share of the
    apps and a seed of its own (its own phone numbers)."""
    share = len(run.edge_urls)
    argv = [
        sys.executable, "-m", "rideshare.simulate",
        "--edge-url", run.edge_urls[edge],
        "--drivers", str(max(1, args.drivers // share)),
        "--riders", str(max(1, args.riders // share)),
        "--rate", str(args.rate / share),
        "--speedup", str(args.speedup),
        "--duration", str(args.duration),
        "--drain", str(args.drain),
        "--seed", str(args.seed + 1000 * edge),
        "--quiet",
        "--json-out", str(summary_path),
    ]  # fmt: skip
    # run.env names the data directory, whose infra.json gives the riders' card provider
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=run.env
    )
    return await process.wait()


# -- checks against the stores ---------------------------------------------------------------


async def _check_stores(run: Run) -> dict[str, list[str]]:
    urls = load_infra_urls(run.data_dir)
    conn = await asyncpg.connect(urls.postgres_dsn, timeout=10)
    redis = open_redis(urls.redis_url)
    try:
        return {
            "stuck_trips": await _stuck_trips(conn),
            "drivers_on_two_trips": await _overlapping_drivers(conn),
            "unsent_outbox_rows": await _unsent_outbox(conn),
            "notifications_missing": await _settled(lambda: _missing_notifications(conn)),
            "notifications_duplicated": await _duplicated_notifications(conn),
            "index_disagrees": await _settled(lambda: _index_disagreements(conn, redis)),
        }
    finally:
        await redis.aclose()
        await conn.close()


async def _settled(check: Callable[[], Awaitable[list[str]]], *, wait_s: float = 60.0) -> list[str]:
    """``check()`` once it finds nothing, or what it still finds after ``wait_s``: consumers
    apply the last events a moment after the simulation ends."""
    deadline = time.monotonic() + wait_s
    while True:
        found = await check()
        if not found or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(1.0)


async def _stuck_trips(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT t.id, t.state, now() - max(x.at) AS idle FROM trip.trips t "
        "JOIN trip.trip_transitions x ON x.trip_id = t.id "
        "WHERE t.state = ANY($1::text[]) GROUP BY t.id, t.state "
        "HAVING now() - max(x.at) > make_interval(secs => $2)",
        list(LIVE_STATES),
        STUCK_LIMIT_S,
    )
    return [f"{r['id']} {r['state']} idle {r['idle']}" for r in rows]


async def _overlapping_drivers(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.driver_id, a.id AS one, b.id AS other FROM trip.trips a "
        "JOIN trip.trips b ON a.driver_id = b.driver_id AND a.id < b.id "
        "WHERE a.accepted_at IS NOT NULL AND b.accepted_at IS NOT NULL "
        "AND tstzrange(a.accepted_at, coalesce(a.ended_at, 'infinity')) "
        "&& tstzrange(b.accepted_at, coalesce(b.ended_at, 'infinity'))"
    )
    return [f"driver {r['driver_id']}: {r['one']} and {r['other']}" for r in rows]


async def _unsent_outbox(conn: asyncpg.Connection) -> list[str]:
    # The relays run on; give them time to drain what the last fault left.
    found: list[str] = []
    for _ in range(60):
        found = []
        for schema in OUTBOX_SCHEMAS:
            count = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL"
            )
            if count:
                found.append(f"{schema}: {count} unsent")
        if not found:
            return []
        await asyncio.sleep(1)
    return found


class _Blank(dict[str, str]):
    """Facts for planning who an event notifies: a fact the store adds later (the driver's
    car) reads as blank; ``get`` (who the recipient is) is not affected."""

    def __missing__(self, key: str) -> str:
        return ""


async def _missing_notifications(conn: asyncpg.Connection) -> list[str]:
    """Events published (outbox rows, kept for the outbox retention) that should have made a
    notification for a user who has none for that event."""
    rows = await conn.fetch(
        " UNION ALL ".join(
            f"SELECT event_id, subject, payload FROM {schema}.outbox WHERE sent_at IS NOT NULL"
            for schema in OUTBOX_SCHEMAS
        )
    )
    have = {
        (r["event_id"], r["user_id"])
        for r in await conn.fetch("SELECT event_id, user_id FROM notification.notifications")
    }
    missing = []
    now = datetime.now(UTC)
    for row in rows:
        templates = TEMPLATES.get(row["subject"])
        if not templates:
            continue
        message = payload_type(row["subject"]).FromString(row["payload"])
        facts = _Blank(facts_of(row["subject"], message))
        for draft in plan(templates, facts, event_id=row["event_id"], created_at=now):
            if (row["event_id"], draft.user_id) not in have:
                missing.append(f"{row['subject']} {row['event_id']} for {draft.user_id}")
    return missing


async def _duplicated_notifications(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT event_id, user_id, count(*) AS n FROM notification.notifications "
        "GROUP BY event_id, user_id HAVING count(*) > 1"
    )
    return [f"{r['event_id']} for {r['user_id']}: {r['n']} times" for r in rows]


# Availability as location stores it (location/domain.py Availability).
_AVAILABLE, _ON_TRIP, _OFFLINE = "1", "3", "4"


async def _index_disagreements(conn: asyncpg.Connection, redis: RedisClient) -> list[str]:
    """Drivers whose availability in the location index contradicts the driver service (online
    or not) or the trip service (on a live trip or not)."""
    drivers = await conn.fetch("SELECT id, online FROM driver.drivers")
    on_trip = {
        r["driver_id"]: r["id"]
        for r in await conn.fetch(
            "SELECT driver_id, id FROM trip.trips WHERE driver_id IS NOT NULL "
            "AND state IN ('ACCEPTED', 'ARRIVED', 'IN_PROGRESS')"
        )
    }
    wrong = []
    for driver in drivers:
        raw = await redis.hmget(f"{LOCATION_PREFIX}d:{driver['id']}", "a", "h")
        availability, holder = (v.decode() if isinstance(v, bytes) else v for v in raw)
        trip_id = on_trip.get(driver["id"])
        if trip_id is not None and (availability != _ON_TRIP or holder != trip_id):
            wrong.append(f"{driver['id']}: on trip {trip_id}, index says {availability}/{holder}")
        elif trip_id is None and availability == _ON_TRIP:
            wrong.append(f"{driver['id']}: on no live trip, index says ON_TRIP for {holder}")
        elif not driver["online"] and availability not in (None, _OFFLINE):
            wrong.append(f"{driver['id']}: offline, index says {availability}")
        elif driver["online"] and trip_id is None and availability in (None, _OFFLINE):
            wrong.append(f"{driver['id']}: online and free, index says {availability}")
    return wrong


def _server_errors_outside_faults(summary: dict[str, Any], faults: Sequence[Fault]) -> list[str]:
    windows = [
        (f.at - 1.0, f.at + (f.healthy_after_s or 0.0) + 10.0) for f in faults
    ]  # slack for calls in flight when the fault hit and for clients' retries after it
    bad = []
    for error in summary.get("server_5xx", []):
        status = int(error.get("status", 0))
        at = float(error.get("at", 0.0))
        inside = any(start <= at <= end for start, end in windows)
        if status not in (503, 504) or not inside:
            bad.append(f"{error.get('method')} {error.get('path')} -> {status} at {at:.1f}")
    return bad


# -- the run ---------------------------------------------------------------------------------


async def chaos(args: argparse.Namespace, data_dir: Path, logs: Logs) -> dict[str, Any]:
    async with _system(data_dir, logs.up, cluster=args.cluster) as run:
        paths = [data_dir / f"simulate-{i + 1}.json" for i in range(len(run.edge_urls))]
        if len(paths) == 1:
            paths = [data_dir / "simulate.json"]
        simulations = [
            asyncio.create_task(_simulate(run, args, path, logs.simulate, edge=i))
            for i, path in enumerate(paths)
        ]
        if not args.no_faults:
            faults = CLUSTER_FAULTS if args.cluster else FAULTS
            await _faults(run, faults, warmup_s=args.warmup, pause_s=args.pause)
        sim_exits = await asyncio.gather(*simulations)
        checks = await _check_stores(run)
    summaries = [_read_json(path) for path in paths]
    checks["server_errors_outside_faults"] = [
        bad for summary in summaries for bad in _server_errors_outside_faults(summary, run.faults)
    ]
    return {
        "seed": args.seed,
        "cluster": args.cluster,
        "faults": [
            {
                "action": f.action,
                "target": f.target,
                "process": f.process,
                "at": f.at,
                "healthy_after_s": f.healthy_after_s,
                "taken_over_after_s": f.taken_over_after_s,
            }
            for f in run.faults
        ],
        "trips_requested": sum(s.get("counters", {}).get("trips_requested", 0) for s in summaries),
        "trips_completed": sum(s.get("trips_by_state", {}).get("completed", 0) for s in summaries),
        "simulator_exit": max(sim_exits),
        "simulator_violations": [v for s in summaries for v in s.get("violations", [])],
        "checks": checks,
        "ok": not any(checks.values()),
        "data_dir": str(data_dir),
    }


@dataclass
class Logs:
    up: IO[bytes]
    simulate: IO[bytes]


# "<process> | {json log record}" as the launcher writes up.log
_LOG_LINE = re.compile(r"^(?P<process>[\w-]+)\s*\| (?P<record>\{.*\})$")
_AT = re.compile(r" at (?P<at>\d+(?:\.\d+)?)$")


def _print_logs_near(up_log: Path, bad: Sequence[str], *, around_s: float = 3.0) -> None:
    """The warnings and errors every process logged around each unexplained 5xx, so that a
    failed run (in CI, where the data directory is gone afterwards) tells what happened."""
    times = [float(m["at"]) for m in (_AT.search(b) for b in bad) if m is not None]
    if not times:
        return
    print(f"-- warnings and errors within {around_s:.0f} s of each unexplained 5xx:")
    with up_log.open(errors="replace") as lines:
        for line in lines:
            match = _LOG_LINE.match(line.rstrip("\n"))
            if match is None:
                continue
            try:
                record = json.loads(match["record"])
                at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if record.get("level") in ("WARNING", "ERROR") and any(
                abs(at - t) <= around_s for t in times
            ):
                exc = str(record.get("exc", "")).strip().splitlines()
                tail = f" [{exc[-1][:300]}]" if exc else ""
                print(f"{match['process']} {record['ts']} {record.get('msg', '')[:300]}{tail}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drivers", type=int, default=16)
    parser.add_argument("--riders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--speedup", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--drain", type=float, default=45.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the 1st fault")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between faults")
    parser.add_argument("--no-faults", action="store_true", help="the same run without faults")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="rideshare up --cluster, and the cluster's faults (see above)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json-out", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rideshare-chaos-")).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"chaos run in {data_dir} (logs: up.log, simulate.log)", flush=True)
    with (data_dir / "up.log").open("wb") as up, (data_dir / "simulate.log").open("wb") as sim:
        try:
            result = asyncio.run(chaos(args, data_dir, Logs(up, sim)))
        except TimeoutError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2))
    _print_logs_near(data_dir / "up.log", result["checks"]["server_errors_outside_faults"])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
