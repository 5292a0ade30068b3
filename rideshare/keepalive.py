"""HTTP/2 keepalive of every gRPC channel and server, set in one place so the two agree.

A client pings every ``time_s`` on an otherwise idle connection (idle NATs and proxies drop
connections silently; a dead peer is found within ``time_s + timeout_s``); a server counts a
ping that comes sooner than ``min_ping_interval_s`` after the one before, without the server
having sent data in between, as a strike, and answers more than ``max_ping_strikes`` strikes
with GOAWAY ``too_many_pings`` (ENHANCE_YOUR_CALM), which fails every call on the connection.

Why that can never happen between our own processes:

- A keepalive ping is sent ``time_s`` after the previous one was *acknowledged*, never while
  one is outstanding, so the server receives two keepalive pings at least ``time_s`` apart
  however long either side stalls (a stalled server reads the one ping late and the next one
  is sent after its ack). The server allows half that: the margin covers timer jitter.
- gRPC core sends keepalive pings from its own threads, so a client whose event loop is
  blocked keeps its pings on schedule (measured: a loop blocked for 8 s with a 1 s keepalive
  sent exactly one ping a second).
- Other pings (BDP probes) follow data the server sent, and sending data clears the strikes.

The server's minimum was set under a name gRPC does not read
(``grpc.http2.min_recv_ping_interval_without_data_ms``; the argument is
``grpc.http2.min_ping_interval_without_data_ms``), so servers kept gRPC's default of one ping
per 5 minutes: a connection on which the server sent nothing for about 80 s (four 20-s
keepalives; a ReportPositions stream carries no server data until it ends) drew the GOAWAY.
tests/integration/test_grpc_keepalive.py holds an idle stream open past several periods with
the client's loop blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_KEEPALIVE", "Keepalive"]


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The one keepalive policy: client pings and the server's tolerance derive from it."""

    time_s: float = 20.0
    timeout_s: float = 10.0
    max_ping_strikes: int = 2

    def __post_init__(self) -> None:
        if self.time_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"keepalive times must be positive, got {self}")

    @property
    def min_ping_interval_s(self) -> float:
        """The closest two client pings may come at the server: half the client's period."""
        return self.time_s / 2

    def client_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.keepalive_time_ms", _ms(self.time_s)),
            ("grpc.keepalive_timeout_ms", _ms(self.timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, Any]]:
        return [
            # The server's own pings find clients that vanished; clients never police them.
            ("grpc.keepalive_time_ms", _ms(self.time_s * 1.5)),
            ("grpc.keepalive_timeout_ms", _ms(self.timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.min_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


DEFAULT_KEEPALIVE = Keepalive()
