"""The local cluster profile: what ``rideshare infra up --cluster`` starts on 127.0.0.1.

In place of the single servers of :class:`~rideshare.infra.EmbeddedInfra`:

- NATS: ``nats_nodes`` nodes (``nats-1`` ...) forming one JetStream cluster
  (rideshare/nats_cluster.py); the URL names them all, and the stream is kept on
  ``min(3, nats_nodes)`` of them (``jetstream_replicas`` in the infra file).
- PostgreSQL: the primary (``postgres``) and a hot standby streaming from it
  (``postgres-standby``, rideshare/pg_standby.py), synchronous unless told otherwise; the DSN
  names both with ``target_session_attrs=read-write``. :meth:`ClusterInfra.failover_postgres`
  stops the primary and promotes the standby.
- Valkey: a Valkey Cluster of three masters and three replicas (``valkey-1`` ...,
  rideshare/valkey_cluster.py); the URL is ``redis+cluster://`` and names every node.

Every process is started, restarted and stopped by PID like the single servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import nats

from rideshare.infra import (
    _PG_DATA_ARG,
    PG_USER,
    EmbeddedInfra,
    InfraError,
    _give_to,
    _pg_user,
    _remove_stale_pidfile,
    _ServerSpec,
    _write_private,
    free_port,
    nats_server_binary,
    pg_bin_dir,
    pg_bin_dir_for,
    probe_nats,
    probe_postgres,
    probe_redis,
)
from rideshare.infra_users import (
    ADMIN,
    NATS_USERS,
    PASSWORD_BYTES,
    VALKEY_USERS,
    nats_authorization,
)
from rideshare.nats_cluster import nats_servers, node_config, servers_url, stream_leader
from rideshare.pg_standby import (
    STANDBY_NAME,
    base_backup,
    failover_dsn,
    host_dsns,
    promote,
    role,
    set_synchronous,
    wait_streaming,
)
from rideshare.redis_client import is_cluster_url, open_redis
from rideshare.secrets_dir import secret_file
from rideshare.settings import InfraUrls
from rideshare.valkey_cluster import NODE_TIMEOUT_MS, ValkeyCluster

__all__ = [
    "FAILED_OVER_FILE",
    "PRIMARY",
    "STANDBY",
    "ClusterInfra",
    "NodeState",
    "node_states",
    "valkey_nodes",
]

logger = logging.getLogger(__name__)

PRIMARY = "postgres"
STANDBY = "postgres-standby"
# Written by whoever fails over (this process or ``rideshare failover postgres`` from
# another): from then on the old primary is never started again by the launcher.
FAILED_OVER_FILE = "postgres-failed-over"
# How long a lost Valkey node waits for its replica to take over before it is started again:
# the node timeout, an election and slack for a loaded host.
REPLACE_WAIT_S = 5 * NODE_TIMEOUT_MS / 1000


@dataclass
class ClusterInfra(EmbeddedInfra):
    """:class:`EmbeddedInfra` with a NATS cluster and a PostgreSQL standby."""

    nats_nodes: int = 3
    synchronous_standby: bool = True
    _failed_over: bool = field(default=False, init=False, repr=False)
    # Valkey node name -> (port, admin URL of that node)
    _valkey_nodes: dict[str, tuple[int, str]] = field(default_factory=dict, init=False, repr=False)

    async def start(self) -> InfraUrls:
        # A failover of an earlier run: _start_standby refuses a promoted standby's data.
        (self.data_dir / FAILED_OVER_FILE).unlink(missing_ok=True)
        urls = await super().start()
        self.urls = dataclasses.replace(urls, jetstream_replicas=min(3, self.nats_nodes))
        self._write_infra_file(self.urls)
        return self.urls

    @property
    def failed_over(self) -> bool:
        return self._failed_over or (self.data_dir / FAILED_OVER_FILE).exists()

    def supervised(self) -> list[str]:
        """Every node; the primary only until a failover."""
        return [
            p.name
            for p in self.processes
            if p.name != "stripe" and not (self.failed_over and p.name == PRIMARY)
        ]

    def dead(self) -> list[str]:
        # A primary stopped by failover stays stopped: it is no longer the database.
        return [name for name in super().dead() if not (self.failed_over and name == PRIMARY)]

    async def restart(self, name: str) -> None:
        if name in self._valkey_nodes:
            await self._wait_replaced(name)
        if name == PRIMARY and self.failed_over:
            raise InfraError(
                "the old primary was failed over: it may come back only as a new standby"
            )
        await super().restart(name)
        if name == PRIMARY and self.failed_over:  # failed over while it was starting
            self._process(PRIMARY).stop()
            raise InfraError("the old primary was failed over while it was starting again")

    async def failover_postgres(self) -> float:
        """Stop the primary (if it still runs) and promote the standby; the seconds taken.

        The primary is stopped first so that there is never a moment with two servers taking
        writes (see rideshare/pg_standby.py)."""
        began = time.monotonic()
        self._failed_over = True
        (self.data_dir / FAILED_OVER_FILE).touch()
        self._process(PRIMARY).stop()
        await promote(self.postgres_hosts()[1])
        return time.monotonic() - began

    async def _wait_replaced(self, name: str) -> None:
        """Until no live node names Valkey node ``name`` as the master of a slot (its
        replica has taken over), or ``REPLACE_WAIT_S``. A killed master started again
        sooner, before the cluster's node timeout, would still be the master of its slots,
        and empty (nothing is persisted): its replica would then copy the empty node."""
        port = self._valkey_nodes[name][0]
        deadline = time.monotonic() + REPLACE_WAIT_S
        while time.monotonic() < deadline:
            masters = await self._valkey_masters(exclude=name)
            if masters is not None and port not in masters:
                return
            await asyncio.sleep(0.2)
        logger.warning("%s is still named a master after %.0f s", name, REPLACE_WAIT_S)

    async def _valkey_masters(self, *, exclude: str) -> set[int] | None:
        """The ports of the masters in a live node's slot map, or None when none answers."""
        for other, (_, url) in self._valkey_nodes.items():
            if other == exclude:
                continue
            client = open_redis(url, max_connections=1, timeout_s=1.0)
            try:
                async with asyncio.timeout(2.0):
                    slots = await client.execute_command("CLUSTER SLOTS")
            except Exception:  # every client library has its own "down" errors
                continue
            finally:
                await client.aclose()
            return {int(master[1]) for _, _, master, *_ in slots}
        return None

    def _refuse_failed_over(self, prepare: Callable[[], None] | None) -> None:
        if self.failed_over:
            raise InfraError("the old primary was failed over: it is not started again")
        if prepare is not None:
            prepare()

    def postgres_hosts(self) -> list[str]:
        """The primary's DSN, then the standby's, each reaching that one server."""
        if self.urls is None:
            raise InfraError("the cluster is not started")
        return host_dsns(self.urls.postgres_dsn)

    async def _start_redis(self) -> str:
        """The Valkey Cluster with this install's passwords; each node is a server of its
        own here, restarted on its port and directory, where it rejoins the cluster."""
        passwords = {user: self._password("valkey", user) for user in (ADMIN, *VALKEY_USERS)}
        cluster = ValkeyCluster(self.data_dir / "valkey-cluster", passwords=passwords)
        url = await cluster.start()
        for port, proc in cluster.processes.items():
            node = f"redis://{ADMIN}:{passwords[ADMIN]}@127.0.0.1:{port}/0"
            self._valkey_nodes[proc.name] = (port, node)
            self._specs[proc.name] = _ServerSpec(
                proc.name, cluster.argv[port], proc.log_path, functools.partial(probe_redis, node)
            )
            self._replace(proc)
        return url

    async def _start_nats(self) -> str:
        passwords = {user: self._password("nats", user) for user in (ADMIN, *NATS_USERS)}
        chosen: set[int] = set()

        def port() -> int:
            # Nothing binds the ports until the nodes start: keep them from repeating.
            value = self._free_port_outside(chosen)
            chosen.add(value)
            return value

        client_ports = [port() for _ in range(self.nats_nodes)]
        route_ports = [port() for _ in range(self.nats_nodes)]
        specs = []
        for i, (client_port, route_port) in enumerate(zip(client_ports, route_ports, strict=True)):
            name = f"nats-{i + 1}"
            store = self.data_dir / name
            store.mkdir(exist_ok=True)
            config = store / "nats.conf"
            node = node_config(
                name=name,
                authorization=nats_authorization(passwords),
                store_dir=str(store),
                route_port=route_port,
                route_ports=route_ports,
            )
            _write_private(config, json.dumps(node))
            argv = [
                str(nats_server_binary()),
                "-c", str(config),
                "-a", "127.0.0.1",
                "-p", str(client_port),
            ]  # fmt: skip
            url = servers_url(ADMIN, passwords[ADMIN], [client_port])
            specs.append(
                _ServerSpec(
                    name,
                    argv,
                    self.data_dir / "logs" / f"{name}.log",
                    lambda url=url: probe_nats(url),  # type: ignore[misc]
                )
            )
        # Side by side: JetStream answers on a node only once a majority of nodes has met.
        await asyncio.gather(*(self._launch(spec) for spec in specs))
        return servers_url(ADMIN, passwords[ADMIN], client_ports)

    def _free_port_outside(self, taken: set[int]) -> int:
        return free_port(exclude=self.reserved_ports | taken)

    async def _start_postgres(self) -> str:
        primary_dsn = await super()._start_postgres()
        spec = self._specs[PRIMARY]
        # Checked before every spawn, also the retries of a restart already under way when
        # another process (rideshare failover) failed over.
        self._specs[PRIMARY] = dataclasses.replace(
            spec, prepare=functools.partial(self._refuse_failed_over, spec.prepare)
        )
        standby_dsn = await self._start_standby(host_dsns(primary_dsn)[0])
        admin_dsn = urlunsplit(urlsplit(primary_dsn)._replace(path="/postgres"))
        await wait_streaming(admin_dsn)
        await set_synchronous(admin_dsn, synchronous=self.synchronous_standby)
        return failover_dsn([primary_dsn, standby_dsn])

    async def _start_standby(self, primary_dsn: str) -> str:
        """A fresh copy of the primary, started as its standby on a port of its own."""
        run_as = _pg_user()
        bin_dir = await asyncio.to_thread(pg_bin_dir_for, run_as, pg_bin_dir())
        root = self.data_dir / STANDBY
        pgdata = root / "data"
        if (pgdata / "PG_VERSION").exists() and not (pgdata / "standby.signal").exists():
            raise InfraError(
                f"{pgdata} was promoted to primary by a failover and holds the newest data: "
                f"move it to {self.data_dir / PRIMARY / 'data'} (after putting the old one "
                "aside) before starting the cluster again"
            )
        # Made again at each start: a copy is seconds for a local database, and an old one
        # may be too far behind for the primary's WAL to catch it up.
        shutil.rmtree(pgdata, ignore_errors=True)
        root.mkdir(exist_ok=True)
        pgdata.mkdir(mode=0o700)
        if run_as:
            _give_to(run_as, root)
        password = secret_file(self.data_dir / PRIMARY, "password", PASSWORD_BYTES)
        primary = urlsplit(primary_dsn)
        await base_backup(
            bin_dir,
            port=primary.port or 5432,
            user=PG_USER,
            password=password,
            pgdata=pgdata,
            data_arg=_PG_DATA_ARG,
            run_as=run_as,
        )
        port = self._free_port()
        argv = [*self._postgres_argv(bin_dir, port), "-c", f"cluster_name={STANDBY_NAME}"]
        dsn = urlunsplit(primary._replace(netloc=f"{PG_USER}:{password}@127.0.0.1:{port}"))
        admin_dsn = urlunsplit(
            primary._replace(netloc=f"{PG_USER}:{password}@127.0.0.1:{port}", path="/postgres")
        )
        await self._launch(
            _ServerSpec(
                STANDBY,
                argv,
                root / "postgres.log",
                lambda: probe_postgres(admin_dsn),
                user=run_as,
                cwd=pgdata,
                stop_signal=signal.SIGINT,
                prepare=lambda: _remove_stale_pidfile(pgdata),
            )
        )
        return dsn


@dataclass(frozen=True)
class NodeState:
    """One node of a server that has several, as ``rideshare status`` shows it."""

    name: str
    address: str
    # "primary", "standby", "stream leader", "replica", "master", or "DOWN (<error>)"
    role: str


async def node_states(urls: InfraUrls, *, timeout_s: float = 3.0) -> list[NodeState]:
    """Each NATS node, Valkey Cluster node and PostgreSQL host that ``urls`` names more than
    one of, with its role now; nothing for a server named once."""
    states: list[NodeState] = []
    servers = nats_servers(urls.nats_url)
    if len(servers) > 1:
        leader = await _stream_leader(urls.nats_url, timeout_s=timeout_s)
        for i, server in enumerate(servers):
            name = f"nats-{i + 1}"
            try:
                async with asyncio.timeout(timeout_s):
                    await probe_nats(server)
                state = "stream leader" if name == leader else "replica"
            except Exception as exc:  # every client library has its own "down" errors
                state = f"DOWN ({type(exc).__name__})"
            states.append(NodeState(name, _address(server), state))
    if is_cluster_url(urls.redis_url):
        for i, node in enumerate(valkey_nodes(urls.redis_url)):
            try:
                state = await _valkey_role(node, timeout_s=timeout_s)
            except Exception as exc:  # every client library has its own "down" errors
                state = f"DOWN ({type(exc).__name__})"
            states.append(NodeState(f"valkey-{i + 1}", _address(node), state))
    hosts = host_dsns(urls.postgres_dsn)
    if len(hosts) > 1:
        for name, dsn in zip((PRIMARY, STANDBY), hosts, strict=False):
            try:
                state = await role(dsn, timeout_s=timeout_s)
            except Exception as exc:  # every client library has its own "down" errors
                state = f"DOWN ({type(exc).__name__})"
            states.append(NodeState(name, _address(dsn), state))
    return states


def valkey_nodes(url: str) -> list[str]:
    """A ``redis://`` URL for each node a ``redis+cluster://`` URL names, in its order (the
    order of ``valkey-1`` ...), with the same login."""
    parts = urlsplit(url)
    login, _, hosts = parts.netloc.rpartition("@")
    return [
        urlunsplit(("redis", f"{login}@{host}" if login else host, "/0", "", ""))
        for host in hosts.split(",")
    ]


async def _valkey_role(node_url: str, *, timeout_s: float) -> str:
    client = open_redis(node_url, max_connections=1, timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            reply = await client.execute_command("ROLE")
    finally:
        await client.aclose()
    name = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return "master" if name == "master" else "replica"


async def _stream_leader(url: str, *, timeout_s: float) -> str | None:
    try:
        async with asyncio.timeout(timeout_s):
            nc = await nats.connect(nats_servers(url), allow_reconnect=False, connect_timeout=1)
            try:
                return await stream_leader(nc.jetstream(timeout=timeout_s))
            finally:
                await nc.close()
    except Exception:  # no stream yet, or no quorum: no leader to show
        return None


def _address(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]
