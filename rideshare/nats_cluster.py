"""NATS server lists, and a JetStream cluster of ``nats-server`` processes on one host.

A NATS URL may name several servers, so that a client rides out the loss of one: either the
same login for every host, as libpq writes several PostgreSQL hosts,
``nats://user:pass@127.0.0.1:4222,127.0.0.1:4223,127.0.0.1:4224``, or whole URLs separated by
commas, ``nats://user:pass@a:4222,nats://user:pass@b:4222``. The first form is what the
embedded cluster writes: the settings swap its one login for each service's own
(:meth:`rideshare.settings.InfraUrls.for_service`). :func:`nats_servers` turns either into
the list that nats-py connects to.

The cluster (:func:`node_config`): every node has its own JetStream store, listens for
routes on 127.0.0.1 and names every node's route port, its own included (a server skips a
route to itself), so any two nodes that start make a quorum. ``no_advertise`` keeps the
servers from telling clients about each other: a client gets the whole list from its URL,
with the login, where an advertised address would come without one and be refused.

A JetStream stream with R replicas is held by R nodes, one of them its leader; a publish is
acknowledged once a majority stored it, so with R3 the loss of any one node loses no
acknowledged message, and publishes pause while the others elect a new leader (a few
seconds). R is :attr:`rideshare.settings.InfraUrls.jetstream_replicas` (1 on a single node).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from nats.js import JetStreamContext

from protos.events import STREAM

__all__ = ["CLUSTER_NAME", "nats_servers", "node_config", "servers_url", "stream_leader"]

CLUSTER_NAME = "rideshare"


def nats_servers(url: str) -> list[str]:
    """The server URLs in ``url`` (see the module docstring for the two forms), each with
    the login it is to use; a host without a scheme takes the first URL's scheme and login."""
    items = [item.strip() for item in url.split(",") if item.strip()]
    if not items:
        raise ValueError("empty NATS URL")
    first = urlsplit(items[0] if "://" in items[0] else f"nats://{items[0]}")
    login = first.netloc.rpartition("@")[0]
    servers = []
    for item in items:
        if "://" in item:
            servers.append(item)
        else:
            netloc = f"{login}@{item}" if login else item
            servers.append(urlunsplit(first._replace(netloc=netloc, path="")))
    return servers


def servers_url(user: str, password: str, ports: Sequence[int], host: str = "127.0.0.1") -> str:
    """One URL naming every node, with one login (the form :func:`nats_servers` reads)."""
    hosts = ",".join(f"{host}:{port}" for port in ports)
    return f"nats://{user}:{password}@{hosts}"


def node_config(
    *,
    name: str,
    authorization: dict[str, object],
    store_dir: str,
    route_port: int,
    route_ports: Sequence[int],
    host: str = "127.0.0.1",
) -> dict[str, object]:
    """The configuration of one cluster node (NATS reads JSON as its configuration format)."""
    return {
        "server_name": name,
        "authorization": authorization,
        "jetstream": {"store_dir": store_dir},
        "cluster": {
            "name": CLUSTER_NAME,
            "listen": f"{host}:{route_port}",
            "routes": [f"nats-route://{host}:{port}" for port in route_ports],
            "no_advertise": True,
        },
    }


async def stream_leader(js: JetStreamContext, stream: str = STREAM) -> str | None:
    """The server name of the node leading ``stream`` now (None: no leader, or no cluster)."""
    info = await js.stream_info(stream)
    return info.cluster.leader if info.cluster is not None else None
