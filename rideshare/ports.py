"""Binding a service's fixed port when something else may hold it for a while.

The services' default ports (50051-50055) lie inside Linux's ephemeral port range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), from which the kernel
draws the local port of every outgoing connection. So a port can be taken by any process's
short-lived connection, not only by a second server, and is usually free again seconds later.
A server therefore retries its bind for ``RIDESHARE_BIND_RETRY_S`` and only then gives up,
with one line that names the port and, when ``/proc`` shows it, the process holding it.

Both kinds of server use this module: the gRPC services (``GrpcServer.start``, which lets
grpc bind and so first waits with :func:`wait_for_port`) and the edge (which binds with
:func:`bind_port` and hands the sockets to uvicorn, so nothing can slip in between).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from pathlib import Path

__all__ = [
    "PortInUseError",
    "bind_port",
    "describe_port_holder",
    "port_in_use_error",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

RETRY_EVERY_S = 0.25
_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_TCP_LISTEN = "0A"
_MAX_COMMAND_CHARS = 200


class PortInUseError(OSError):
    """A port stayed taken for the whole retry period; the message is one line for the user."""


async def bind_port(
    host: str, port: int, *, retry_s: float, reuse_port: bool = False
) -> list[socket.socket]:
    """TCP sockets bound (not yet listening) to every address ``host`` resolves to, on ``port``.

    While the port is taken, tries again every :data:`RETRY_EVERY_S` for ``retry_s`` seconds,
    then raises :class:`PortInUseError` naming the port and its holder. Port 0 binds at once
    (a free port). The options are those servers use (``SO_REUSEADDR``, so connections of
    an earlier run still in TIME_WAIT do not count as holders; IPv6 sockets IPv6-only).
    ``reuse_port`` adds ``SO_REUSEPORT``: processes of the same user that all set it share
    the port, and the kernel spreads new connections over their listening sockets (the
    edge's workers, edge/workers.py); a holder without it still makes the port taken.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_s
    logged = False
    while True:
        try:
            return await _bind_all(host, port, reuse_port=reuse_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        if loop.time() >= deadline:
            raise await port_in_use_error(host, port, retry_s)
        if not logged:
            logger.warning("%s:%d is in use; retrying for up to %.1f s", host, port, retry_s)
            logged = True
        await asyncio.sleep(min(RETRY_EVERY_S, max(0.0, deadline - loop.time())))


async def wait_for_port(host: str, port: int, *, retry_s: float) -> None:
    """Return once ``host:port`` can be bound (for a server that binds it itself right after);
    :class:`PortInUseError` when it stays taken for ``retry_s`` seconds."""
    if port == 0:
        return
    for sock in await bind_port(host, port, retry_s=retry_s):
        sock.close()


async def port_in_use_error(host: str, port: int, retry_s: float) -> PortInUseError:
    """The error for ``host:port`` still taken after ``retry_s``, naming its holder."""
    holder = await asyncio.to_thread(describe_port_holder, port)
    return PortInUseError(
        f"{host}:{port} is in use, {holder}, still after {retry_s:g} s "
        f"(RIDESHARE_BIND_RETRY_S); stop it or choose another port",
    )


def describe_port_holder(port: int) -> str:
    """Who holds local TCP ``port``: ``held by pid N (command line)``, or ``held by another
    process`` when ``/proc`` does not tell (the holder is another user's and we are not root,
    or lives in another network namespace).

    ``/proc/net/tcp`` and ``tcp6`` list this network namespace's sockets with their local port
    and inode, a listener before a connection; ``/proc/<pid>/fd/*`` links name the inodes as
    ``socket:[N]``.
    """
    inodes = _socket_inodes(port)
    if inodes:
        owners = _socket_owners(set(inodes))
        for inode in inodes:
            if inode in owners:
                pid = owners[inode]
                return f"held by pid {pid} ({_command_line(pid)})"
    return "held by another process"


async def _bind_all(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _socket_inodes(port: int) -> list[int]:
    """Inodes of the sockets on local ``port``, listening ones first."""
    listening: list[int] = []
    other: list[int] = []
    for table in _TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rpartition(":")[2], 16)
            inode = int(fields[9])
            if local_port == port and inode != 0:  # 0: TIME_WAIT, owned by no process
                (listening if fields[3] == _TCP_LISTEN else other).append(inode)
    return listening + other


def _socket_owners(inodes: set[int]) -> dict[int, int]:
    """inode -> pid, for the first process found with each of ``inodes`` open."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                fds = os.scandir(f"/proc/{entry.name}/fd")
            except OSError:  # gone, or not ours to read
                continue
            with fds:
                for fd in fds:
                    try:
                        inode = wanted.get(os.readlink(fd.path))
                    except OSError:
                        continue
                    if inode is not None and inode not in owners:
                        owners[inode] = int(entry.name)
            if len(owners) == len(wanted):
                break
    return owners


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    words = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    line = "".join(c if c.isprintable() else " " for c in words) or "?"
    if len(line) > _MAX_COMMAND_CHARS:
        return line[: _MAX_COMMAND_CHARS - 3] + "..."
    return line
