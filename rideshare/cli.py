"""The ``rideshare`` command: start and inspect the infrastructure and the services.

    rideshare infra up|down|status [--data-dir DIR] [--cluster]  (--cluster: with up)
    rideshare failover postgres [--data-dir DIR]
    rideshare up [--data-dir DIR] [--demo] [--cluster]
    rideshare simulate [--drivers N --riders M ...]   (rideshare.simulate; --help lists all)
    rideshare status|down [--data-dir DIR]
    rideshare token [--role admin|rider|driver] [--subject ID] [--data-dir DIR]
    rideshare token --grpc [--data-dir DIR]            (an operator's token for grpcurl)

``up`` commands run in the foreground until SIGINT/SIGTERM and then stop every child.

This module is the launcher, the one part of ``rideshare`` that sits above the services: it
starts them as processes (by name, never by import), and ``token`` signs with the edge's own
code. That code is imported inside the function that needs it, so importing the shared
runtime never imports a service (tests/unit/test_package_graph.py holds both rules).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

from rideshare import ids
from rideshare.identity import OPERATOR, load_internal_secret
from rideshare.identity import mint_token as mint_service_token
from rideshare.infra import (
    EmbeddedInfra,
    probe_nats,
    probe_postgres,
    probe_redis,
    probe_stripe,
)
from rideshare.infra_cluster import FAILED_OVER_FILE, PRIMARY, ClusterInfra, node_states
from rideshare.pg_standby import host_dsns, promote, role
from rideshare.settings import (
    INFRA_FILE,
    ONE_ADDRESS_LOGIN_LIMITS,
    InfraUrls,
    SettingsError,
    data_dir_from_env,
    env_str,
    load_infra_urls,
    mask_url,
)
from rideshare.supervisor import (
    STATUS_FILE,
    Health,
    ServiceProcess,
    Supervisor,
    available_services,
    probe_service,
    read_status,
    service_port,
)

__all__ = ["main"]

logger = logging.getLogger("rideshare.cli")

LOCK_FILE = "rideshare.lock"
_ENV_URLS = ("RIDESHARE_REDIS_URL", "RIDESHARE_POSTGRES_DSN", "RIDESHARE_NATS_URL")
UP_READY_TIMEOUT_S = 120.0
CLUSTER_COPIES = 2  # of every service, edge included, in ``rideshare up --cluster
TOKEN_TTL_S = 12 * 3600
Role = Literal["admin", "rider", "driver"]
ROLES: tuple[Role, ...] = ("admin", "rider", "driver")


class AlreadyRunningError(RuntimeError):
    pass


@contextlib.contextmanager
def single_launcher(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data directory for as long as a launcher runs there."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle: IO[str] = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunningError(
            f"rideshare is already running from {data_dir} (pid {pid}); "
            f"stop it with Ctrl-C in its terminal or `rideshare down --data-dir {data_dir}`"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _launcher_pid(data_dir: Path) -> int | None:
    try:
        text = (data_dir / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _urls_given() -> bool:
    return all(os.environ.get(name, "").strip() for name in _ENV_URLS)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def _infrastructure(
    data_dir: Path, *, cluster: bool = False
) -> AsyncIterator[tuple[InfraUrls, EmbeddedInfra | None]]:
    """The servers' URLs, and the embedded servers when this process started them (with
    ``cluster``, the local cluster profile: rideshare/infra_cluster.py)."""
    if _urls_given():
        urls = load_infra_urls(data_dir)
        print(f"using the given infrastructure: {urls!r}", flush=True)
        yield urls, None
        return
    embedded = ClusterInfra(data_dir) if cluster else EmbeddedInfra(data_dir)
    try:
        urls = await embedded.start()
        yield urls, embedded
    finally:
        embedded.stop()


async def _infra_up(data_dir: Path, *, cluster: bool = False) -> int:
    stop = _stop_event()
    load_internal_secret(data_dir)  # created now, before any service reads it
    async with _infrastructure(data_dir, cluster=cluster) as (urls, _):
        print(
            "infrastructure is up:\n"
            f"  RIDESHARE_REDIS_URL={mask_url(urls.redis_url)}\n"
            f"  RIDESHARE_POSTGRES_DSN={mask_url(urls.postgres_dsn)}\n"
            f"  RIDESHARE_NATS_URL={mask_url(urls.nats_url)}\n"
            f"  RIDESHARE_STRIPE_API_BASE={urls.stripe_api_base}\n"
            f"  RIDESHARE_JETSTREAM_REPLICAS={urls.jetstream_replicas}\n"
            f"  (full URLs, and every service's own, in {data_dir / INFRA_FILE}); "
            "Ctrl-C stops it",
            flush=True,
        )
        await stop.wait()
    print("infrastructure stopped", flush=True)
    return 0


async def _up(data_dir: Path, *, demo: bool = False, cluster: bool = False) -> int:
    """Start the servers and every service, keep them running (restarting what dies) until
    the user stops it; only that stop stops everything. With ``cluster``: the cluster
    profile's servers (rideshare/infra_cluster.py) and two copies of every service."""
    stop = _stop_event()
    began = time.monotonic()
    load_internal_secret(data_dir)  # created now, before any service reads it
    async with _infrastructure(data_dir, cluster=cluster) as (urls, servers):
        supervisor = Supervisor(
            urls,
            extra_env={"RIDESHARE_DATA_DIR": str(data_dir), **(_demo_env() if demo else {})},
            servers=servers,
            status_file=data_dir / STATUS_FILE,
            ready_timeout_s=UP_READY_TIMEOUT_S,
            copies=CLUSTER_COPIES if cluster else 1,
        )
        try:
            await supervisor.spawn_all(available_services())
            async with supervisor.supervising():
                if not await _unless_stopped(
                    stop, supervisor.wait_all_up(timeout_s=UP_READY_TIMEOUT_S)
                ):
                    return 0
                children = supervisor.children
                edge = any(c.service == "edge" for c in children)
                token = mint_token(data_dir, role="admin") if edge else None
                _print_banner(data_dir, children, token=None if demo else token)
                print(f"healthy {time.monotonic() - began:.1f} s after start", flush=True)
                async with (
                    _demo(token, urls.stripe_api_base)
                    if demo and token
                    else contextlib.nullcontext()
                ):
                    await stop.wait()
        except RuntimeError as exc:
            print(f"rideshare: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            print("stopping services...", flush=True)
            await supervisor.stop_all()
            (data_dir / STATUS_FILE).unlink(missing_ok=True)
    print("stopped", flush=True)
    return 0


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[None]) -> bool:
    """Run ``work`` unless ``stop`` is set first; True when ``work`` finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return True


def _demo_env() -> dict[str, str]:
    """The simulated city's phones all sign up and log in from this machine's address: the
    edge's per-address limits are lifted for it, unless this environment sets them."""
    return {k: v for k, v in ONE_ADDRESS_LOGIN_LIMITS.items() if k not in os.environ}


def _demo(token: str, stripe_api_base: str) -> contextlib.AbstractAsyncContextManager[None]:
    # Imported when used: the simulator brings httpx and websockets, which no other
    # command needs.
    from rideshare.simulate.demo import running_demo

    return running_demo(token=token, stripe_api_base=stripe_api_base)


def mint_token(
    data_dir: Path, *, role: Role, subject: str | None = None, ttl_s: int = TOKEN_TTL_S
) -> str:
    """A token the edge accepts: signed with the edge's secret (``RIDESHARE_JWT_SECRET``, else
    ``<data_dir>/jwt-secret``, created on first use as the edge would), for ``subject``
    (default: a new ``<role>-<uuid>``) in ``role``. SettingsError for a secret that is too
    short."""
    # The edge's signing and secret, imported here and only here: the launcher may know the
    # services it starts, the rest of the shared runtime may not.
    from edge.auth import issue_token
    from edge.settings import MIN_SECRET_LEN, load_jwt_secret

    secret = env_str("RIDESHARE_JWT_SECRET", "")
    if secret and len(secret) < MIN_SECRET_LEN:
        raise SettingsError(
            f"RIDESHARE_JWT_SECRET is {len(secret)} characters; use at least {MIN_SECRET_LEN}"
        )
    if subject is not None and not ids.is_id(subject):
        # The edge would accept it, and every service would refuse the id it names.
        raise SettingsError(
            f"--subject {subject!r} is not an id: use 1-{ids.MAX_ID_LEN} of A-Z a-z 0-9 _ -"
        )
    secret = secret or load_jwt_secret(data_dir)
    sub = subject or f"{role}-{uuid.uuid4()}"
    return issue_token(secret, sub=sub, role=role, ttl_s=ttl_s)


def _print_banner(
    data_dir: Path, children: Sequence[ServiceProcess], *, token: str | None = None
) -> None:
    """What runs where; with ``token``, the live map's URL signed in as an admin."""
    lines = ["", "rideshare is up:"]
    for child in children:
        if child.service == "edge":
            lines.append(f"  {child.name:<15} http://127.0.0.1:{child.port}  (viewer: /viewer)")
        else:
            lines.append(f"  {child.name:<15} grpc 127.0.0.1:{child.port}")
    edges = [c for c in children if c.service == "edge"]
    if len(edges) > 1:
        lines.append(
            "  (any edge copy serves any user; a real deployment puts a load balancer in front)"
        )
    if token is not None and edges:
        from rideshare.simulate.demo import viewer_url

        url = viewer_url(f"http://127.0.0.1:{edges[0].port}", token)
        lines += [f"live map (admin token, valid {TOKEN_TTL_S // 3600} h):", f"  {url}"]
    grpc_ports = [c.port for c in children if c.service != "edge"]
    if grpc_ports:
        lines += [
            "try:",
            f"  .venv/bin/grpcurl -plaintext 127.0.0.1:{grpc_ports[0]} list",
            f"  .venv/bin/grpcurl -plaintext 127.0.0.1:{grpc_ports[0]} grpc.health.v1.Health/Check",
            '  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $(./run token --grpc)" '
            f"127.0.0.1:{grpc_ports[0]} <service>/<method>",
        ]
    lines += [f"infrastructure URLs: {data_dir / INFRA_FILE}", "Ctrl-C stops everything", ""]
    print("\n".join(lines), flush=True)


async def _status(data_dir: Path, *, services: bool) -> int:
    try:
        urls = load_infra_urls(data_dir)
    except SettingsError as exc:
        print(f"not running: {exc}")
        return 1
    ok = True
    checks = (
        ("redis", urls.redis_url, probe_redis),
        ("postgres", urls.postgres_dsn, probe_postgres),
        ("nats", urls.nats_url, probe_nats),
        *((("stripe", urls.stripe_api_base, probe_stripe),) if urls.stripe_api_base else ()),
    )
    pids = _recorded_pids(data_dir)
    records = read_status(data_dir)
    for name, url, probe in checks:
        try:
            async with asyncio.timeout(3):
                await probe(url)
            state = "up"
        except Exception as exc:
            state, ok = f"DOWN ({type(exc).__name__})", False
        supervised = _supervision(records.get(name)) or f"pid={pids.get(name, '-')}"
        print(f"{name:<13} {state:<6} {mask_url(url)}  {supervised}")
    for node in await node_states(urls):
        record = records.get(node.name)
        retired = bool(record) and record.get("state") == "retired"  # type: ignore[union-attr]
        ok = ok and (retired or not node.role.startswith("DOWN"))
        supervised = _supervision(record) or f"pid={pids.get(node.name, '-')}"
        print(f"  {node.name:<17} {node.address:<21} {node.role:<14} {supervised}")
    if services:
        records = read_status(data_dir)
        copies = {n: r for n, r in records.items() if r.get("kind") == "service" and r.get("role")}
        for name, record in copies.items():  # rideshare up --cluster
            port, service = record.get("port"), record.get("service")
            if not isinstance(port, int) or not isinstance(service, str):
                continue
            health = await probe_service(service, port)
            ok = ok and health is Health.SERVING
            state = "up" if health is Health.SERVING else f"DOWN ({health.value})"
            print(
                f"{name:<15} {state:<6} 127.0.0.1:{port:<5}  {record['role']:<20} "
                f"{_supervision(record)}"
            )
        for name in () if copies else available_services():
            port = service_port(name)
            health = await probe_service(name, port)
            ok = ok and health is Health.SERVING
            state = "up" if health is Health.SERVING else f"DOWN ({health.value})"
            print(f"{name:<13} {state:<6} 127.0.0.1:{port}  {_supervision(records.get(name))}")
    return 0 if ok else 1


def _supervision(record: dict[str, object] | None) -> str:
    """``pid=.. restarts=.. uptime=..`` from a running launcher's status file, or ''."""
    if not record:
        return ""
    up_since = record.get("up_since")
    uptime = (
        f"{time.time() - up_since:.0f}s"
        if isinstance(up_since, int | float) and record.get("state") == "up"
        else "-"
    )
    text = f"pid={record.get('pid')} restarts={record.get('restarts')} uptime={uptime}"
    if record.get("state") not in ("up", None):
        text += f" state={record.get('state')}"
    if record.get("last_exit"):
        text += f" last_exit={record.get('last_exit')!r}"
    return text


async def _failover_postgres(data_dir: Path, timeout_s: float = 30.0) -> int:
    """Stop the primary started by ``infra up --cluster`` and promote its standby."""
    urls = load_infra_urls(data_dir)
    hosts = host_dsns(urls.postgres_dsn)
    if len(hosts) < 2:
        print("rideshare failover: the PostgreSQL DSN names one host: no standby", file=sys.stderr)
        return 2
    primary, standby = hosts[:2]
    if await _answers_as(standby) == "primary":
        print("rideshare failover: the standby was already promoted", file=sys.stderr)
        return 1
    # Never two primaries: the old one is stopped first (see rideshare/pg_standby.py), and a
    # running launcher is told first not to start it again (rideshare/infra_cluster.py).
    (data_dir / FAILED_OVER_FILE).touch()
    pids = [_recorded_pids(data_dir).get(PRIMARY), _postmaster_pid(data_dir / PRIMARY / "data")]
    for pid in dict.fromkeys(p for p in pids if p is not None and _alive(p)):
        await _stop_postgres(pid, timeout_s=timeout_s)
    if await _answers_as(primary) == "primary":
        (data_dir / FAILED_OVER_FILE).unlink(missing_ok=True)
        print(
            f"rideshare failover: the primary at {mask_url(primary)} still answers and was not "
            "started from this data dir: stop it first",
            file=sys.stderr,
        )
        return 1
    began = time.monotonic()
    await promote(standby)
    print(f"promoted the standby {mask_url(standby)} in {time.monotonic() - began:.2f} s")
    return 0


async def _stop_postgres(pid: int, *, timeout_s: float) -> None:
    os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid in a data directory's postmaster.pid: the primary as it runs now, even when
    a launcher has just restarted it and not yet recorded its new pid."""
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


async def _answers_as(dsn: str) -> str | None:
    try:
        return await role(dsn)
    except Exception:  # every way of not answering: down, refused, timed out
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: an exited child that its launcher has not reaped yet (a zombie)
    counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _recorded_pids(data_dir: Path) -> dict[str, int]:
    try:
        record = json.loads((data_dir / INFRA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    pids = record.get("pids", {})
    return {str(k): int(v) for k, v in pids.items()} if isinstance(pids, dict) else {}


def _down(data_dir: Path, timeout_s: float = 30.0) -> int:
    pid = _launcher_pid(data_dir)
    if pid is None:
        print(f"nothing is running from {data_dir}")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"nothing is running from {data_dir} (pid {pid} is gone)")
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped pid {pid}")
            return 0
        time.sleep(0.1)
    print(f"pid {pid} did not stop within {timeout_s:.0f}s", file=sys.stderr)
    return 1


def _token(args: argparse.Namespace, data_dir: Path) -> int:
    if args.ttl < 60:
        print("rideshare token: --ttl is at least 60 seconds", file=sys.stderr)
        return 2
    if args.grpc:
        if args.role is not None or args.subject:
            print(
                "rideshare token: a --grpc token is the operator's own; to act for a user, "
                "add the header x-acting-user: <role>:<id> to the call",
                file=sys.stderr,
            )
            return 2
        secret = load_internal_secret(data_dir)
        print(mint_service_token(secret, service=OPERATOR, ttl_s=args.ttl))
        return 0
    args.role = args.role or "admin"
    if args.role != "admin" and not args.subject:
        print(
            f"rideshare token: a {args.role} token names its {args.role}: --subject <id>",
            file=sys.stderr,
        )
        return 2
    print(mint_token(data_dir, role=args.role, subject=args.subject, ttl_s=args.ttl))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rideshare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="where embedded servers keep data and the URLs file (default: .rideshare)",
        )
        return p

    infra = sub.add_parser(
        "infra", help="only the infrastructure: Redis, PostgreSQL, NATS, localstripe"
    )
    infra_sub = infra.add_subparsers(dest="infra_command", required=True)
    infra_up = with_data_dir(infra_sub.add_parser("up", help="start it in the foreground"))
    infra_up.add_argument(
        "--cluster",
        action="store_true",
        help="3 NATS nodes (JetStream R3) and PostgreSQL primary + synchronous standby",
    )
    with_data_dir(infra_sub.add_parser("down", help="stop the one started by `infra up`"))
    with_data_dir(infra_sub.add_parser("status", help="print what runs where; exit 0 if all up"))
    up = with_data_dir(
        sub.add_parser("up", help="infrastructure and every service, in the foreground")
    )
    up.add_argument("--demo", action="store_true", help="and the simulator with a small city")
    up.add_argument(
        "--cluster",
        action="store_true",
        help="the servers of `infra up --cluster` and two copies of every service, the edge "
        "included (each edge's address is printed; put a load balancer in front)",
    )
    sub.add_parser(
        "simulate", help="simulated driver and rider apps against the edge", add_help=False
    )
    with_data_dir(sub.add_parser("status", help="infrastructure and services; exit 0 if all up"))
    failover = with_data_dir(
        sub.add_parser("failover", help="stop the PostgreSQL primary, promote its standby")
    )
    failover.add_argument("server", choices=("postgres",))
    with_data_dir(sub.add_parser("down", help="stop the `rideshare up` running from the data dir"))
    token = with_data_dir(
        sub.add_parser(
            "token",
            help="print a token the edge accepts, signed with the data dir's secret",
            description="Print a token signed with the edge's secret: RIDESHARE_JWT_SECRET, "
            "else <data dir>/jwt-secret. An admin token opens the live map "
            "(http://127.0.0.1:8080/viewer#token=...) and the /v1/admin routes. With --grpc: "
            "a service token for calling the gRPC services directly as the operator, signed "
            "with RIDESHARE_INTERNAL_SECRET, else <data dir>/internal-secret "
            "(grpcurl -H 'authorization: Bearer <token>').",
        )
    )
    token.add_argument(
        "--grpc",
        action="store_true",
        help="an operator's token for the gRPC services (grpcurl), not an app token",
    )
    token.add_argument("--role", choices=ROLES, default=None, help="default: admin")
    token.add_argument(
        "--subject",
        help="the user id (required for rider and driver: the id the edge returned "
        "at sign-up); default for admin: a new admin-<uuid>",
    )
    token.add_argument(
        "--ttl", type=int, default=TOKEN_TTL_S, help="lifetime in seconds (default: 12 h)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        from rideshare.simulate.cli import main as simulate

        return simulate(argv[1:], prog="rideshare simulate")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data_dir: Path = (args.data_dir or data_dir_from_env()).absolute()
    try:
        if args.command == "infra":
            if args.infra_command == "up":
                with single_launcher(data_dir):
                    return asyncio.run(_infra_up(data_dir, cluster=args.cluster))
            if args.infra_command == "down":
                return _down(data_dir)
            return asyncio.run(_status(data_dir, services=False))
        if args.command == "up":
            with single_launcher(data_dir):
                return asyncio.run(_up(data_dir, demo=args.demo, cluster=args.cluster))
        if args.command == "down":
            return _down(data_dir)
        if args.command == "failover":
            return asyncio.run(_failover_postgres(data_dir))
        if args.command == "token":
            return _token(args, data_dir)
        return asyncio.run(_status(data_dir, services=True))
    except (AlreadyRunningError, SettingsError) as exc:
        print(f"rideshare: {exc}", file=sys.stderr)
        return 2
