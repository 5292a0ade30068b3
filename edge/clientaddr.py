"""Which address a request comes from: the peer, or what a trusted proxy says. Pure: no I/O.

``X-Forwarded-For`` is a list any client can write to, so it is read only when the peer is a
proxy the operator named (RIDESHARE_TRUSTED_PROXIES), and then from the right: each trusted
proxy appends the address it saw, so the client is the rightmost address that is not itself
a trusted proxy. Anything left of it was written by the client and is never used. With no
trusted proxies (the default) the header is ignored and the peer is the client.

uvicorn has its own proxy-header handling (trusting 127.0.0.1 by default); the edge turns it
off (edge/app.py) so that this is the only place that decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["Network", "client_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDRs (``10.0.0.0/8, 127.0.0.1, ::1``); ValueError
    naming the first one that is neither."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address given the TCP ``peer`` and every ``X-Forwarded-For`` header value
    in the order received."""
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            # Garbage at this point means no trusted proxy wrote it: stop at the last
            # address a trusted one vouched for.
            return client
        client = hop
        if not _trusted(hop, trusted):
            return client
    return client
