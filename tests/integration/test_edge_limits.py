"""The edge's limits against a hostile client, over real services, Redis and NATS: whose
address a request has, rate limits on WebSocket handshakes, the socket cap per user, floods
closed with 1008, body size (413), deep nesting and loose types.

Tests that need a rate bucket of their own name a fresh client address through a trusted
proxy (the loopback peer), so no test drains another's bucket in the shared Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edge.app import EdgeServer
from rideshare.settings import InfraUrls
from tests.integration.edge_system import System, describe, edge_system, logged_errors
from tests.integration.test_edge import recv_json, signup_driver, signup_rider

LOOPBACK = (ip_network("127.0.0.1/32"),)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"t_{uuid.uuid4().hex[:8]}") as system:
        yield system


def fresh_ip() -> str:
    """A client address no other test uses (TEST-NET-2, random host)."""
    n = uuid.uuid4().int
    return f"198.51.{n % 256}.{(n >> 8) % 254 + 1}"


def ws_url(edge: EdgeServer, path: str) -> str:
    return edge.url.replace("http://", "ws://") + path


async def closed_with(ws: ClientConnection, *, timeout_s: float = 10.0) -> int:
    """The close code the edge sends, reading (and ignoring) frames until then."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code


async def still_open(ws: ClientConnection) -> None:
    """The socket answers: a message of an unknown type gets its error frame."""
    await ws.send(json.dumps({"type": "are-you-there"}))
    frame = await recv_json(ws, skip=("ping", "trip"))
    assert frame["code"] == "unknown_type", frame


# -- client address ------------------------------------------------------------------------


async def test_x_forwarded_for_is_ignored_without_trusted_proxies(system: System) -> None:
    async with (
        system.another_edge(rate_per_ip=0.1, burst_per_ip=2) as edge,
        httpx.AsyncClient(base_url=edge.url, timeout=10.0) as http,
    ):
        statuses = [
            (await http.get("/v1/me/trips", headers={"X-Forwarded-For": fresh_ip()})).status_code
            for _ in range(8)
        ]
    # One bucket for the peer, whatever each request claims: at most the burst (and what
    # refills meanwhile) gets through.
    assert statuses.count(429) >= 4, statuses
    assert set(statuses) <= {401, 429}


async def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(system: System) -> None:
    drained = fresh_ip()
    async with (
        system.another_edge(trusted_proxies=LOOPBACK, rate_per_ip=0.1, burst_per_ip=2) as edge,
        httpx.AsyncClient(base_url=edge.url, timeout=10.0) as http,
    ):

        async def status(forwarded_for: str) -> int:
            r = await http.get("/v1/me/trips", headers={"X-Forwarded-For": forwarded_for})
            return r.status_code

        others = [await status(ip) for ip in (fresh_ip(), fresh_ip(), fresh_ip()) for _ in (1, 2)]
        own = [await status(drained) for _ in range(4)]
        # the client's own entry, left of what the proxy appended, does not choose the bucket
        spoofed = await status(f"{fresh_ip()}, {drained}")
    assert others == [401] * 6  # a bucket per client: two each fit in the burst
    assert own[:2] == [401, 401] and 429 in own[2:], own
    assert spoofed == 429


# -- WebSocket handshakes --------------------------------------------------------------------


async def test_a_handshake_flood_is_refused_with_429_while_another_client_connects(
    system: System,
) -> None:
    _, token = await signup_driver(system)
    flooder, honest = fresh_ip(), fresh_ip()
    refused: list[Any] = []
    limits = {"trusted_proxies": LOOPBACK, "rate_per_ip": 0.05, "burst_per_ip": 3}
    async with system.another_edge(**limits) as edge:
        with logged_errors() as errors:
            for _ in range(8):
                try:
                    async with connect(
                        ws_url(edge, "/v1/ws/driver?token=garbage"),
                        additional_headers={"X-Forwarded-For": flooder},
                    ) as ws:
                        await closed_with(ws)  # 4401: the handshake itself got through
                except InvalidStatus as exc:
                    refused.append(exc.response)
        async with connect(
            ws_url(edge, f"/v1/ws/driver?token={token}"),
            additional_headers={"X-Forwarded-For": honest},
        ) as ws:
            await still_open(ws)
    assert len(refused) >= 4, len(refused)
    assert not errors, describe(errors)  # a refusal is no error of the edge's
    for response in refused:
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert json.loads(response.body)["error"]["code"] == "rate_limited"


async def test_handshakes_take_from_the_tokens_bucket_too(system: System) -> None:
    _, flooding_token = await signup_rider(system)
    _, other_token = await signup_rider(system)
    statuses: list[int] = []
    async with system.another_edge(rate_per_token=0.05, burst_per_token=2) as edge:
        for _ in range(5):
            try:
                async with connect(ws_url(edge, f"/v1/ws/rider?token={flooding_token}")):
                    statuses.append(101)
            except InvalidStatus as exc:
                statuses.append(exc.response.status_code)
        # A token sent in the first message is only known after the upgrade: 4429 then.
        async with connect(ws_url(edge, "/v1/ws/rider")) as ws:
            await ws.send(json.dumps({"type": "auth", "token": flooding_token}))
            refusal = await recv_json(ws)
            code = await closed_with(ws)
        async with connect(ws_url(edge, f"/v1/ws/rider?token={other_token}")) as ws:
            await still_open(ws)
    assert statuses[:2] == [101, 101] and statuses.count(429) >= 2, statuses
    assert refusal == {**refusal, "type": "error", "code": "rate_limited"}
    assert code == 4429


# -- sockets per user and floods -----------------------------------------------------------


async def test_a_users_oldest_sockets_are_closed_beyond_the_cap(system: System) -> None:
    _, token = await signup_driver(system)
    async with system.another_edge(ws_max_per_user=2) as edge:
        url = ws_url(edge, f"/v1/ws/driver?token={token}")
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for _ in range(4):
                ws = await stack.enter_async_context(connect(url))
                await still_open(ws)  # registered before the next one comes
                sockets.append(ws)
            codes = [await closed_with(ws) for ws in sockets[:2]]
            for ws in sockets[2:]:
                await still_open(ws)
    assert codes == [4409, 4409]


async def test_the_cap_counts_a_users_sockets_on_every_edge_process(system: System) -> None:
    """Two edges on one Valkey (as the workers of one edge are): the newest sockets stay,
    whichever process holds them, and the oldest, on the other process, is replaced."""
    _, token = await signup_driver(system)
    async with (
        system.another_edge(ws_max_per_user=2) as one,
        system.another_edge(ws_max_per_user=2) as two,
        contextlib.AsyncExitStack() as stack,
    ):
        oldest = await stack.enter_async_context(
            connect(ws_url(one, f"/v1/ws/driver?token={token}"))
        )
        await still_open(oldest)
        middle = await stack.enter_async_context(
            connect(ws_url(one, f"/v1/ws/driver?token={token}"))
        )
        await still_open(middle)
        newest = await stack.enter_async_context(
            connect(ws_url(two, f"/v1/ws/driver?token={token}"))
        )
        code = await closed_with(oldest)
        await still_open(middle)
        await still_open(newest)
    assert code == 4409
    assert oldest.close_reason == "replaced by a newer socket of the same user"


@pytest.mark.parametrize("kind", ["driver", "viewer"])
async def test_a_socket_that_keeps_flooding_is_closed_with_1008(system: System, kind: str) -> None:
    # Every socket kind reads its frames through one loop (edge/ws.py read_frames).
    if kind == "driver":
        _, token = await signup_driver(system)
        path = f"/v1/ws/driver?token={token}"
    else:  # a box far south: no other test's drivers in it
        path = f"/v1/ws/viewer?bbox=-80.1,0.0,-80.0,0.1&token={system.admin_token()}"
    async with system.another_edge(ws_msgs_per_s=1.0, ws_msgs_burst=2, ws_flood_frames=5) as edge:
        async with connect(ws_url(edge, path)) as ws:
            with contextlib.suppress(ConnectionClosed):  # the close may come while it sends
                for _ in range(200):
                    await ws.send('{"type": "pong"}')
            code = await closed_with(ws)
            reason = ws.close_reason
    assert code == 1008
    assert reason == "message rate exceeded"


async def test_a_short_burst_is_throttled_and_the_socket_stays_open(system: System) -> None:
    _, token = await signup_driver(system)
    async with system.another_edge(ws_msgs_per_s=0.5, ws_msgs_burst=2, ws_flood_frames=5) as edge:
        async with connect(ws_url(edge, f"/v1/ws/driver?token={token}")) as ws:
            for _ in range(5):  # three over the rate: fewer than the flood allowance
                await ws.send('{"type": "pong"}')
            frames = [await recv_json(ws, skip=("ping", "trip")) for _ in range(3)]
            await asyncio.sleep(2.5)  # earn a message back
            await still_open(ws)
    assert [f["code"] for f in frames] == ["rate_limited"] * 3


# -- body size -----------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_before_it_is_read_or_parsed(system: System) -> None:
    async with system.client() as http:
        declared = await http.post("/v1/riders", content=b"[" * 10_000_000, headers=JSON)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "payload_too_large"


async def test_a_chunked_body_is_413_once_it_passes_the_limit(system: System) -> None:
    async def chunks(n: int, piece: bytes) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield piece

    async def small_signup() -> AsyncIterator[bytes]:
        body = {"name": "Ada", "phone": "+49151" + str(uuid.uuid4().int)[:8]}
        yield json.dumps(body | {"password": "correct-horse"}).encode()

    async with (
        system.another_edge(max_body_bytes=4096) as edge,
        httpx.AsyncClient(base_url=edge.url, timeout=10.0) as http,
    ):
        # not JSON at all: a 422 would mean it was parsed
        big = await http.post("/v1/riders", content=chunks(100, b"x" * 1024), headers=JSON)
        small = await http.post("/v1/riders", content=small_signup(), headers=JSON)
    assert "content-length" not in big.request.headers  # chunked
    assert big.status_code == 413, big.text
    assert big.json()["error"]["code"] == "payload_too_large"
    assert small.status_code == 201, small.text


# -- nesting and types -----------------------------------------------------------------------


async def test_deeply_nested_frames_get_a_clean_answer_before_and_after_auth(
    system: System,
) -> None:
    _, token = await signup_rider(system)
    with logged_errors() as errors:
        async with connect(f"{system.ws_url}/v1/ws/rider") as ws:
            await ws.send("[" * 4000)  # as the first, unauthenticated frame
            before = await recv_json(ws)
            before_code = await closed_with(ws)
        async with connect(f"{system.ws_url}/v1/ws/rider?token={token}") as ws:
            await ws.send("[" * 4000)
            after = await recv_json(ws, skip=("ping", "trip"))
            await ws.send(b'{"a":' * 800)
            after_bytes = await recv_json(ws, skip=("ping", "trip"))
            await still_open(ws)
    assert before["code"] == "unauthenticated" and before_code == 4401
    assert after["code"] == after_bytes["code"] == "too_deep"
    assert not errors, describe(errors)


async def test_a_deeply_nested_http_body_is_a_client_error(system: System) -> None:
    _, token = await signup_rider(system)
    with logged_errors() as errors:
        async with system.client(token) as http:
            r = await http.post("/v1/fare-estimates", content=b"[" * 60_000, headers=JSON)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("bad_request", "invalid_argument")
    assert not errors, describe(errors)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/drivers/me/position", {"lat": True, "lng": 13.4}),
        ("/v1/drivers/me/position", {"lat": 52.5, "lng": "13.4"}),
        ("/v1/drivers/me/position", {"lat": 52.5, "lng": 13.4, "ts_ms": 1.5}),
        (
            "/v1/fare-estimates",
            {"pickup": {"lat": True, "lng": 13.4}, "dropoff": {"lat": 52.5, "lng": 13.4}},
        ),
        (
            "/v1/drivers/me/vehicles",
            {"make": "a", "model": "b", "plate": "c", "seats": "4", "vehicle_class": "xl"},
        ),
    ],
)
async def test_a_bool_or_string_where_a_number_belongs_is_422(
    system: System, path: str, body: dict[str, Any]
) -> None:
    if path == "/v1/fare-estimates":
        _, token = await signup_rider(system)
    else:
        _, token = await signup_driver(system)
    async with system.client(token) as http:
        r = await http.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_argument"
