"""The one keepalive policy (rideshare/keepalive.py): the server tolerates what clients send."""

from __future__ import annotations

import pytest

from rideshare.keepalive import DEFAULT_KEEPALIVE, Keepalive


@pytest.mark.parametrize("policy", [DEFAULT_KEEPALIVE, Keepalive(time_s=0.3, timeout_s=2.0)])
def test_the_server_allows_pings_twice_as_often_as_clients_send_them(policy: Keepalive) -> None:
    client = dict(policy.client_options())
    server = dict(policy.server_options())
    assert server["grpc.http2.min_ping_interval_without_data_ms"] * 2 == pytest.approx(
        client["grpc.keepalive_time_ms"], abs=1
    )
    assert server["grpc.keepalive_permit_without_calls"] == 1
    # The name gRPC ignores, which left servers at one ping per 5 minutes, is gone.
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in server


def test_keepalive_times_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Keepalive(time_s=0)
