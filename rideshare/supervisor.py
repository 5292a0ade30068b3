"""Run the services as child processes and keep them running.

:class:`Supervisor` starts each service with the infrastructure's URLs in its environment,
prefixes its log lines with its name, and, inside :meth:`Supervisor.supervising`, keeps every
service and every embedded server alive:

- a service that exits is started again after a backoff (0.5 s, doubling, capped);
- a service whose health check gets *no answer* for ``hung_after_s`` (hung, frozen with
  SIGSTOP, stuck in a loop) is killed with SIGKILL and so started again. A service that
  answers NOT_SERVING is left alone: that is how it says a server it needs is away, and a
  new copy would wait for the same server;
- an embedded server (Valkey, PostgreSQL, NATS) that exits, or runs but has not answered its
  probe for ``hung_after_s``, is (killed and) started again on the same port and data, and
  the services reconnect by themselves;
- something that keeps failing (``max_restarts`` restarts without ever staying up for
  ``stable_after_s``) is given up on with a message that says so; the rest keeps running.

With ``copies`` above 1 (the local cluster profile, ``rideshare up --cluster``), each service
runs as that many processes, ``trip-1``, ``trip-2`` ..., each on a port of its own (copy 1 on
the service's configured port, the others on free ones), and every ``RIDESHARE_<NAME>_ADDR``
lists the addresses of all copies, so that callers spread their calls over them (round_robin,
rideshare/grpc_client.py). Each copy is restarted on its own, like a single service.

Only the caller's stop (the user's Ctrl-C or ``rideshare down``) stops everything. The state
of every process (pid, restarts, up since) is written to ``supervisor.json`` in the data
directory, where ``rideshare status`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rideshare.infra import _die_with_parent, free_port
from rideshare.settings import (
    SERVICE_PORTS,
    InfraUrls,
    configured_ports,
    env_float,
    env_int,
    service_port,
)

__all__ = [
    "STATUS_FILE",
    "Health",
    "RestartPolicy",
    "ServiceProcess",
    "Supervisor",
    "available_services",
    "grpc_healthy",
    "probe_service",
    "read_status",
    "service_port",
]

logger = logging.getLogger(__name__)

# Start order for a one-by-one start: the services others call come first, the edge last.
SERVICE_ORDER = ("rider", "driver", "location", "trip", "notification", "edge")
STATUS_FILE = "supervisor.json"


class Health(enum.Enum):
    SERVING = "serving"
    NOT_SERVING = "not serving"  # it answers, but something it needs is away
    NO_ANSWER = "no answer"  # not listening yet, hung, or frozen


def available_services() -> list[str]:
    """Services whose package is installed (``python -m <name>`` exists)."""
    return [
        name
        for name in SERVICE_ORDER
        if importlib.util.find_spec(name) and importlib.util.find_spec(f"{name}.__main__")
    ]


async def grpc_health(target: str, *, timeout_s: float = 1.0) -> Health:
    """What grpc.health.v1 Check("") at ``target`` says."""
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return Health.NO_ANSWER
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return Health.SERVING
    return Health.NOT_SERVING


async def grpc_healthy(target: str, *, timeout_s: float = 1.0) -> bool:
    """True when the server at ``target`` answers grpc.health.v1 Check("") with SERVING."""
    return await grpc_health(target, timeout_s=timeout_s) is Health.SERVING


async def http_health(host: str, port: int, *, timeout_s: float = 1.0) -> Health:
    """What ``GET /healthz`` says: 200 is SERVING, any other status NOT_SERVING."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return Health.NO_ANSWER
    finally:
        # closed on every path: a probe that timed out must not leave its socket to the GC
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):  # a frozen peer never reads the close
                    await writer.wait_closed()
    if status_line.startswith(b"HTTP/1.1 200"):
        return Health.SERVING
    return Health.NOT_SERVING if status_line.startswith(b"HTTP/") else Health.NO_ANSWER


async def http_healthy(host: str, port: int, *, timeout_s: float = 1.0) -> bool:
    """True when ``GET /healthz`` answers 200."""
    return await http_health(host, port, timeout_s=timeout_s) is Health.SERVING


async def probe_service(name: str, port: int, *, timeout_s: float = 1.0) -> Health:
    """The health of service ``name`` listening on 127.0.0.1:``port``."""
    if name == "edge":
        return await http_health("127.0.0.1", port, timeout_s=timeout_s)
    return await grpc_health(f"127.0.0.1:{port}", timeout_s=timeout_s)


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart, when to call a process hung, and when to give up."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    max_restarts: int = 6  # in a row, without staying up for stable_after_s in between
    stable_after_s: float = 60.0
    hung_after_s: float = 15.0  # no answer to health checks for this long: kill it
    check_interval_s: float = 1.0
    health_timeout_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RestartPolicy:
        return cls(
            max_restarts=env_int("RIDESHARE_SUPERVISOR_MAX_RESTARTS", 6, minimum=0, env=env),
            hung_after_s=env_float("RIDESHARE_SUPERVISOR_HUNG_S", 15.0, minimum=1.0, env=env),
            backoff_max_s=env_float(
                "RIDESHARE_SUPERVISOR_BACKOFF_MAX_S", 15.0, minimum=0.1, env=env
            ),
        )

    def backoff_s(self, failures_in_a_row: int) -> float:
        """The wait before restart number ``failures_in_a_row`` (1-based)."""
        exponent = max(0, failures_in_a_row - 1)
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2**exponent))


@dataclass
class ProcessRecord:
    """What ``rideshare status`` shows of one supervised process."""

    name: str
    kind: str  # "service" or "server"
    pid: int | None = None
    service: str | None = None  # of a service's process: the service it is a copy of
    port: int | None = None  # of a service's process
    role: str = ""  # of a copy: "copy 2 of trip"
    state: str = "starting"  # starting, up, restarting, failed, stopped
    restarts: int = 0
    up_since: float | None = None  # wall clock, for uptime
    last_exit: str | None = None
    failures_in_a_row: int = 0
    started_at: float = field(default=0.0, repr=False)  # monotonic, of the current copy
    down_at: float | None = field(default=None, repr=False)  # monotonic, when it was lost

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            **({"service": self.service, "port": self.port} if self.service else {}),
            **({"role": self.role} if self.role else {}),
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "up_since": self.up_since,
            "last_exit": self.last_exit,
        }


@dataclass
class ServiceProcess:
    """One service's current process (a restart replaces ``process`` and ``pump``)."""

    name: str  # the service's name, or its copy's ("trip-2")
    process: asyncio.subprocess.Process
    port: int
    pump: asyncio.Task[None]
    service: str = ""  # the service it runs; "" for ``name``

    def __post_init__(self) -> None:
        self.service = self.service or self.name

    async def health(self, *, timeout_s: float = 1.0) -> Health:
        return await probe_service(self.service, self.port, timeout_s=timeout_s)

    async def healthy(self) -> bool:
        return await self.health() is Health.SERVING


class RestartableServers(Protocol):
    """The embedded servers, as the supervisor needs them (rideshare.infra.EmbeddedInfra)."""

    def dead(self) -> list[str]: ...

    async def restart(self, name: str) -> None: ...

    def pid(self, name: str) -> int: ...

    async def answers(self, name: str, *, timeout_s: float = 2.0) -> bool: ...

    def supervised(self) -> list[str]: ...


class Supervisor:
    """Starts each service with the infrastructure URLs in its environment, and keeps it (and
    the embedded servers, when given) running inside :meth:`supervising`."""

    def __init__(
        self,
        infra: InfraUrls,
        *,
        extra_env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        servers: RestartableServers | None = None,
        status_file: Path | None = None,
        policy: RestartPolicy | None = None,
        copies: int = 1,
    ) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, not {copies}")
        self._infra = infra
        self._extra_env = dict(extra_env or {})
        self._ready_timeout_s = ready_timeout_s
        self._servers = servers
        self._status_file = status_file
        self.policy = policy or RestartPolicy.from_env({**os.environ, **self._extra_env})
        self.copies = copies
        # Copy name -> (service, port, metrics port), fixed when first spawned: a restarted
        # copy comes back where its callers look for it.
        self._copies: dict[str, tuple[str, int, int | None]] = {}
        self.children: list[ServiceProcess] = []
        self.records: dict[str, ProcessRecord] = {}
        self._old_pumps: list[asyncio.Task[None]] = []
        # (name, kind, seconds from loss to healthy) for every recovery, in order.
        self.recoveries: list[tuple[str, str, float]] = []

    def copy_names(self, service: str) -> list[str]:
        """The names of ``service``'s processes: itself, or ``<service>-1`` ... with copies."""
        if self.copies == 1:
            return [service]
        return [f"{service}-{i}" for i in range(1, self.copies + 1)]

    def _place(self, services: Iterable[str]) -> None:
        """Give every copy of ``services`` its port (and metrics port), once."""
        env = {**os.environ, **self._extra_env}
        taken = set(configured_ports(env)) | {port for _, port, _ in self._copies.values()}
        for service in services:
            for i, name in enumerate(self.copy_names(service)):
                if name in self._copies:
                    continue
                metrics: int | None = None
                if service in SERVICE_PORTS:
                    metrics_key = f"RIDESHARE_{service.upper()}_METRICS_PORT"
                    metrics = env_int(metrics_key, SERVICE_PORTS[service][1], minimum=0, env=env)
                if i == 0:
                    port = service_port(service, env)
                else:
                    port = free_port(exclude=taken)
                    if metrics:  # 0 stays 0: no metrics endpoint
                        taken.add(port)
                        metrics = free_port(exclude=taken)
                taken.update(p for p in (port, metrics) if p)
                self._copies[name] = (service, port, metrics)

    def addresses(self, service: str) -> list[str]:
        """The ``host:port`` of every placed copy of ``service``."""
        return [f"127.0.0.1:{port}" for s, port, _ in self._copies.values() if s == service]

    def _env(self, name: str) -> dict[str, str]:
        """The environment of service ``name`` (or of its copy ``name``), with URLs as its own
        users (for_service)."""
        env = dict(os.environ)
        env.update(self._extra_env)
        service, port, metrics = self._copies.get(name, (name, 0, None))
        if self.copies > 1:
            upper = service.upper()
            env[f"RIDESHARE_{upper}_PORT"] = str(port)
            if metrics is not None:
                env[f"RIDESHARE_{upper}_METRICS_PORT"] = str(metrics)
            for other in {s for s, _, _ in self._copies.values()}:
                env[f"RIDESHARE_{other.upper()}_ADDR"] = ",".join(self.addresses(other))
        infra = self._infra.for_service(service)
        env["RIDESHARE_REDIS_URL"] = infra.redis_url
        env["RIDESHARE_POSTGRES_DSN"] = infra.postgres_dsn
        env["RIDESHARE_NATS_URL"] = infra.nats_url
        if infra.stripe_api_base:
            env["RIDESHARE_STRIPE_API_BASE"] = infra.stripe_api_base
        env["PYTHONUNBUFFERED"] = "1"
        # Every service finds the others where this supervisor starts them.
        for other in SERVICE_PORTS:
            env.setdefault(
                f"RIDESHARE_{other.upper()}_ADDR", f"127.0.0.1:{service_port(other, env)}"
            )
        return env

    # -- starting and stopping -------------------------------------------------------------

    async def _spawn(self, name: str) -> ServiceProcess:
        if name not in self._copies:
            if self.copies > 1:
                raise ValueError(f"{name!r} is not a copy placed by spawn_all")
            self._place([name])
        service = self._copies[name][0]
        env = self._env(name)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            service,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        pump = asyncio.create_task(_prefix_lines(name, process.stdout))
        child = ServiceProcess(name, process, service_port(service, env), pump, service)
        record = self.records.setdefault(name, ProcessRecord(name, "service"))
        record.service, record.port = service, child.port
        if self.copies > 1:
            record.role = f"copy {self.copy_names(service).index(name) + 1} of {service}"
        record.pid = process.pid
        record.state = "starting"
        record.started_at = time.monotonic()
        for i, old in enumerate(self.children):
            if old.name == name:
                self._old_pumps.append(old.pump)
                self.children[i] = child
                break
        else:
            self.children.append(child)
        self._write_status()
        return child

    async def start(self, name: str) -> ServiceProcess:
        """Start ``name`` and wait until it is healthy (no supervision)."""
        child = await self._spawn(name)
        await self._wait_healthy(child)
        return child

    async def spawn_all(self, names: Iterable[str]) -> None:
        """Start every service (each of its copies) at once, without waiting: none needs
        another to start (gRPC channels connect on first use), so inside :meth:`supervising`,
        :meth:`wait_all_up` takes as long as the slowest start, not the sum of them."""
        services = list(names)
        if self.copies > 1:
            self._place(services)  # all ports first: every copy's environment lists them all
        for service in services:
            for name in self.copy_names(service):
                await self._spawn(name)

    async def _wait_healthy(self, child: ServiceProcess) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        while loop.time() < deadline:
            if child.process.returncode is not None:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")
            if await child.healthy():
                logger.info("%s is ready on 127.0.0.1:%s", child.name, child.port)
                self._mark_up(self.records[child.name])
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name} was not healthy within {self._ready_timeout_s:.0f}s")

    async def stop_all(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM in reverse start order (the edge first), SIGKILL after ``grace_s``."""
        for child in reversed(self.children):
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(grace_s):
                        await child.process.wait()
                except TimeoutError:
                    logger.warning("%s did not stop in %.0fs, killing it", child.name, grace_s)
                    child.process.kill()
                    await child.process.wait()
            await child.pump
            self.records[child.name].state = "stopped"
        for pump in self._old_pumps:
            await pump
        self._old_pumps.clear()
        self.children.clear()
        self._write_status()

    def exited(self) -> list[ServiceProcess]:
        return [c for c in self.children if c.process.returncode is not None]

    def child(self, name: str) -> ServiceProcess:
        return next(c for c in self.children if c.name == name)

    # -- supervision -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def supervising(self) -> AsyncIterator[Supervisor]:
        """Keep every started service (and the embedded servers) running until the block
        exits. Leaving the block stops the supervision, not the services."""
        stop = asyncio.Event()
        for name in self._servers.supervised() if self._servers else ():
            record = self.records.setdefault(name, ProcessRecord(name, "server"))
            record.pid = self._servers.pid(name) if self._servers else None
            self._mark_up(record)
        self._write_status()
        async with asyncio.TaskGroup() as group:
            for child in list(self.children):
                group.create_task(self._keep_service(child.name, stop), name=f"keep-{child.name}")
            if self._servers is not None:
                group.create_task(self._keep_servers(self._servers, stop), name="keep-servers")
            try:
                yield self
            finally:
                stop.set()

    def gave_up(self) -> list[str]:
        """Names of the processes the supervisor stopped restarting."""
        return [r.name for r in self.records.values() if r.state == "failed"]

    async def _keep_service(self, name: str, stop: asyncio.Event) -> None:
        record = self.records[name]
        silent_since: float | None = None
        while not stop.is_set():
            child = self.child(name)
            code = child.process.returncode
            if code is not None:
                if not await self._restart_service(name, code, stop):
                    return
                silent_since = None
                continue
            health = await child.health(timeout_s=self.policy.health_timeout_s)
            now = time.monotonic()
            if health is Health.NO_ANSWER:
                if record.state == "starting":  # still booting: allowed the start timeout
                    silent_since, limit = record.started_at, self._ready_timeout_s
                else:
                    silent_since, limit = silent_since or now, self.policy.hung_after_s
                if now - silent_since >= limit:
                    logger.warning(
                        "%s (pid %s) has not answered its health check for %.0f s; killing it",
                        name,
                        child.process.pid,
                        now - silent_since,
                    )
                    record.down_at = record.down_at or silent_since
                    _kill(child.process.pid)
                    await child.process.wait()
                    continue
            else:
                silent_since = None
                if record.state != "up" and health is Health.SERVING:
                    self._mark_up(record)
            if record.state == "up" and now - record.started_at >= self.policy.stable_after_s:
                record.failures_in_a_row = 0
            # Fast checks while starting, so a start is seen as soon as it is done.
            await _wait(stop, 0.1 if record.state == "starting" else self.policy.check_interval_s)

    async def wait_all_up(self, *, timeout_s: float) -> None:
        """Wait until every supervised service is up; raise if one is given up on first."""
        deadline = time.monotonic() + timeout_s
        while True:
            failed = self.gave_up()
            if failed:
                raise RuntimeError(f"could not start: {', '.join(failed)} (see the log above)")
            waiting = [c.name for c in self.children if self.records[c.name].state != "up"]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"not healthy within {timeout_s:.0f} s: {', '.join(waiting)}")
            await asyncio.sleep(0.05)

    async def _restart_service(self, name: str, code: int, stop: asyncio.Event) -> bool:
        """Start a new copy of ``name`` after a backoff; False once it is given up on."""
        record = self.records[name]
        record.last_exit = _describe_exit(code)
        record.down_at = record.down_at or time.monotonic()
        if not self._count_failure(record):
            return False
        delay = self.policy.backoff_s(record.failures_in_a_row)
        logger.warning(
            "%s stopped unexpectedly (%s); restarting it in %.1f s (restart %d)",
            name,
            record.last_exit,
            delay,
            record.restarts + 1,
        )
        await _wait(stop, delay)
        if stop.is_set():
            return False
        record.restarts += 1
        await self._spawn(name)
        return True

    async def _keep_servers(self, servers: RestartableServers, stop: asyncio.Event) -> None:
        silent_since: dict[str, float] = {}
        while not stop.is_set():
            self._retire(servers.supervised())
            dead = [name for name in servers.dead() if name in self.records]
            for name in dead:
                silent_since.pop(name, None)
                await self._restart_server(servers, name, stop)
            await self._kill_hung_servers(servers, dead, silent_since)
            for record in self.records.values():
                stable = time.monotonic() - record.started_at >= self.policy.stable_after_s
                if record.kind == "server" and record.state == "up" and stable:
                    record.failures_in_a_row = 0
            await _wait(stop, self.policy.check_interval_s)

    async def _restart_server(
        self, servers: RestartableServers, name: str, stop: asyncio.Event
    ) -> None:
        record = self.records[name]
        if record.state in ("failed", "retired"):
            return
        if record.down_at is None:  # it died on its own (a hung one was killed, and said so)
            record.down_at = time.monotonic()
            record.last_exit = "exited"
        if not self._count_failure(record):
            return
        delay = self.policy.backoff_s(record.failures_in_a_row)
        logger.warning("%s stopped; starting it again in %.1f s", name, delay)
        await _wait(stop, delay)
        if stop.is_set():
            return
        record.restarts += 1
        record.state = "starting"
        self._write_status()
        try:
            await servers.restart(name)
        except Exception as exc:
            logger.error("could not start %s again: %s", name, exc)
            return
        record.pid = servers.pid(name)
        record.started_at = time.monotonic()
        self._mark_up(record)

    async def _kill_hung_servers(
        self, servers: RestartableServers, dead: list[str], silent_since: dict[str, float]
    ) -> None:
        """SIGKILL a server that runs but has not answered for ``hung_after_s`` (frozen,
        hung): the next round finds it dead and starts it again."""
        live = [
            r.name
            for r in self.records.values()
            if r.kind == "server" and r.name not in dead and r.state != "retired"
        ]
        answers = await asyncio.gather(
            *(servers.answers(name, timeout_s=self.policy.health_timeout_s) for name in live)
        )
        now = time.monotonic()
        for name, answered in zip(live, answers, strict=True):
            if answered:
                silent_since.pop(name, None)
                continue
            since = silent_since.setdefault(name, now)
            if now - since >= self.policy.hung_after_s:
                logger.warning("%s has not answered for %.0f s; killing it", name, now - since)
                record = self.records[name]
                record.down_at = since
                record.last_exit = "killed: not answering"
                _kill(servers.pid(name))
                silent_since.pop(name, None)

    def _retire(self, supervised: list[str]) -> None:
        """A server no longer kept (a PostgreSQL primary after a failover) is left down."""
        for record in self.records.values():
            if record.kind == "server" and record.name not in supervised:
                if record.state != "retired":
                    logger.warning("%s is no longer kept running (failed over)", record.name)
                    record.state, record.down_at = "retired", None
                    self._write_status()

    def _count_failure(self, record: ProcessRecord) -> bool:
        """Count one more failure in a row; False (and say so) once there were too many."""
        record.failures_in_a_row += 1
        if record.failures_in_a_row <= self.policy.max_restarts:
            record.state = "restarting"
            self._write_status()
            return True
        record.state = "failed"
        self._write_status()
        logger.error(
            "%s failed %d times in a row (last: %s); giving up on it. The rest keeps running; "
            "see its log lines above, fix the cause, and start rideshare again.",
            record.name,
            record.failures_in_a_row,
            record.last_exit,
        )
        return False

    def _mark_up(self, record: ProcessRecord) -> None:
        if record.down_at is not None:
            took = time.monotonic() - record.down_at
            self.recoveries.append((record.name, record.kind, took))
            logger.info("%s is healthy again, %.1f s after it was lost", record.name, took)
        record.state = "up"
        record.up_since = time.time()
        record.down_at = None
        self._write_status()

    def _write_status(self) -> None:
        if self._status_file is None:
            return
        document = {
            "launcher_pid": os.getpid(),
            "updated_at": time.time(),
            "processes": {name: r.to_json() for name, r in self.records.items()},
        }
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(self._status_file)


def read_status(data_dir: Path) -> dict[str, dict[str, object]]:
    """The supervised processes' records written by a running ``rideshare up``, or {}."""
    try:
        document = json.loads((data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    processes = document.get("processes") if isinstance(document, dict) else None
    return processes if isinstance(processes, dict) else {}


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def _prefix_lines(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"{name:<12}| ".encode()
    out = sys.stdout.buffer
    while line := await stream.readline():
        out.write(prefix + line)
        out.flush()
