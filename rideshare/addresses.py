"""Where one upstream service's copies are, as a setting names them, and as gRPC takes it.

Pure (no gRPC import), so settings can check an address when they are read and the channel
code can use the same rule.
"""

from __future__ import annotations

import ipaddress

__all__ = ["channel_target"]


def channel_target(addresses: str) -> str:
    """The gRPC target for ``addresses``, one service's copies as a setting names them.

    ``host:port`` and any target with a scheme (``dns:///name:port``, ``ipv4:...``,
    ``unix:...``) are used as they are. A comma-separated list becomes gRPC's static list,
    ``ipv4:a:1,b:2`` (or ``ipv6:[::1]:1,...``): its entries must be IP literals of one family
    with a port, since a static list is not resolved; a list of names is one DNS name in
    production (``dns:///``). ValueError names what is wrong.
    """
    addresses = addresses.strip()
    if not addresses:
        raise ValueError("no address given (host:port, host:port,host:port or dns:///name:port)")
    if "," not in addresses:
        return addresses
    if ":/" in addresses.partition(",")[0] or addresses.startswith(("ipv4:", "ipv6:")):
        return addresses  # a target with a scheme lists its own addresses
    entries = [entry.strip() for entry in addresses.split(",")]
    families = {_family(entry, addresses) for entry in entries}
    if len(families) != 1:
        raise ValueError(f"{addresses!r} mixes IPv4 and IPv6 addresses; list one family")
    return f"{families.pop()}:{','.join(entries)}"


def _family(entry: str, addresses: str) -> str:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} in {addresses!r} is not host:port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(
            f"{entry!r} in {addresses!r}: a list of addresses takes IP literals; "
            "name the copies by DNS instead (dns:///name:port)"
        ) from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"{entry!r} in {addresses!r}: write an IPv6 address as [addr]:port")
    return f"ipv{ip.version}"
