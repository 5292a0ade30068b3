"""Logins and signups through the edge under attack, over real rider and driver services, real
Redis: a login flood from one address beside an honest rider, the lockout of a phone number
after failed logins and its end, the signup limits, the password rules.

Each client speaks from an address of its own on the loopback network (127.x.y.z), as phones
on the internet would, so the per-address limits tell them apart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from edge.clientaddr import parse_networks
from edge.settings import LoginLimits
from rideshare.settings import InfraUrls
from tests.helpers import eventually
from tests.integration.edge_system import ONE_ADDRESS, System, edge_system

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"l_{uuid.uuid4().hex[:8]}") as system:
        yield system


def phone() -> str:
    return "+49151" + str(uuid.uuid4().int)[:8]


def address() -> str:
    """A loopback address no other test speaks from (never 127.0.0.1)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client(
    url: str, *, source: str, token: str | None = None, conns: int = 10
) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(
        local_address=source, limits=httpx.Limits(max_connections=conns)
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, transport=transport, headers=headers, timeout=30.0)


async def signup_rider(system: System) -> str:
    """A new rider's phone number (password PASSWORD), signed up through the fixture's edge."""
    number = phone()
    async with system.client() as http:
        r = await http.post(
            "/v1/riders", json={"name": "Ada", "phone": number, "password": PASSWORD}
        )
    assert r.status_code == 201, r.text
    return number


def login(number: str, password: str = PASSWORD, role: str = "rider") -> dict[str, Any]:
    return {"phone": number, "password": password, "role": role}


def assert_refused(r: httpx.Response, *, says: str = "") -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert error["code"] == "rate_limited"
    assert says in error["message"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_a_login_flood_from_one_address_leaves_honest_riders_served(
    system: System,
) -> None:
    numbers = [await signup_rider(system) for _ in range(3)]
    flood_s, workers = 8.0, 25
    flood: list[httpx.Response] = []
    honest_logins: list[tuple[int, float]] = []
    honest_reads: list[int] = []
    # The per-address login limits are the defaults. Three honest riders log in again and
    # again, each time from an address of its own (other riders' phones), so the per-phone
    # limit is lifted for this test.
    limits = LoginLimits(logins_per_min_per_phone=60_000, login_burst_per_phone=1000)

    async def guess_until(http: httpx.AsyncClient, end: float) -> None:
        while time.monotonic() < end:
            flood.append(await http.post("/v1/auth/token", json=login(phone(), "wrong-guess-1")))

    async def honest_rider(url: str, number: str) -> None:
        async with client(url, source=address()) as http:
            began = time.monotonic()
            t = await http.post("/v1/auth/token", json=login(number))
            honest_logins.append((t.status_code, time.monotonic() - began))
            if t.status_code == 200:
                token = t.json()["access_token"]
                r = await http.get("/v1/me/trips", headers={"Authorization": f"Bearer {token}"})
                honest_reads.append(r.status_code)

    # Deadlines for a shared, busy machine: here the flood, the edge and the services share
    # one process and its event loop, so every answer waits on the flood's 429s too (the
    # latency of this setup is not the system's: scripts/bench/logins.py runs each process on
    # its own). What must not happen is a flood that reaches the hashes or the breaker.
    async with (
        system.another_edge(
            logins=limits, call_timeout_s=10.0, expensive_call_timeout_s=20.0
        ) as edge,
        client(edge.url, source=address(), conns=workers) as attacker,
    ):
        started = time.monotonic()
        end = started + flood_s
        attack = asyncio.gather(*(guess_until(attacker, end) for _ in range(workers)))
        await eventually(lambda: any(r.status_code == 429 for r in flood), timeout_s=flood_s)
        while not attack.done():
            await asyncio.gather(*(honest_rider(edge.url, n) for n in numbers))
        await attack
        flood_took_s = time.monotonic() - started
        async with client(edge.url, source=address()) as http:
            health = (await http.get("/healthz")).json()

    statuses = [r.status_code for r in flood]
    times = [s for _, s in honest_logins]
    measured = (
        f"flood: {len(flood)} attempts, {statuses.count(429)} refused (429), "
        f"{statuses.count(401)} reached a hash (401); honest logins n={len(times)} "
        f"p50={pct(times, 0.5) * 1000:.0f} ms p99={pct(times, 0.99) * 1000:.0f} ms"
    )
    print(measured)
    assert {s for s, _ in honest_logins} == {200}, (measured, honest_logins)
    assert set(honest_reads) == {200}, (measured, honest_reads)
    assert set(statuses) <= {401, 429}, (measured, sorted(set(statuses)))
    for r in flood:
        if r.status_code == 429:
            assert_refused(r, says="from this address")
    # Only what the address's bucket holds reached a hash: its burst and its refill.
    assert statuses.count(401) <= 10 + flood_took_s * 6 / 60 + 1, measured
    rider = health["upstreams"]["rider"]
    assert rider["breaker"] == rider["expensive_breaker"] == "closed", health


async def test_failed_logins_lock_a_phone_number_for_a_while_with_a_longer_lock_each_time(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    number = await signup_rider(system)
    unknown = phone()
    # Polled from one address: only the lockout is left to refuse.
    limits = dataclasses.replace(
        ONE_ADDRESS,
        lockout_failures=3,
        lockout_s=1.0,
        lockout_max_s=2.0,
        logins_per_min_per_phone=60_000,
        login_burst_per_phone=1000,
    )
    caplog.set_level(logging.WARNING, logger="edge.logins")
    async with (
        system.another_edge(logins=limits) as edge,
        client(edge.url, source=address()) as http,
    ):

        async def attempt(password: str, who: str = number, role: str = "rider") -> httpx.Response:
            return await http.post("/v1/auth/token", json=login(who, password, role))

        wrong = [(await attempt("wrong-guess-1")).status_code for _ in range(3)]
        locked = await attempt(PASSWORD)  # the right password, but too late
        assert wrong == [401, 401, 401]
        assert_refused(locked, says="locked")

        async def accepted() -> bool:
            return (await attempt(PASSWORD)).status_code == 200

        await eventually(accepted, timeout_s=20.0, every_s=0.2)
        # the success cleared the count: one wrong password is just a wrong password
        assert (await attempt("wrong-guess-2")).status_code == 401
        assert (await attempt(PASSWORD)).status_code == 200

        # Three more failures lock it for 1 s; the first failure after that, for 2 s.
        assert [(await attempt("wrong-guess-3")).status_code for _ in range(3)] == [401] * 3

        async def failed_again() -> bool:
            return (await attempt("wrong-guess-4")).status_code == 401

        await eventually(failed_again, timeout_s=20.0, every_s=0.2)
        assert_refused(await attempt(PASSWORD), says="locked")

        # A number nobody has is locked the same way: the lock says nothing about accounts.
        assert [(await attempt("wrong", unknown)).status_code for _ in range(3)] == [401] * 3
        assert_refused(await attempt("wrong", unknown), says="locked")
        # Driver logins: a lock of their own, the same rules.
        assert (await attempt("wrong", unknown, "driver")).status_code == 401
        assert [(await attempt("wrong", unknown, "driver")).status_code for _ in "ab"] == [401] * 2
        assert_refused(await attempt("wrong", unknown, "driver"), says="locked")

    lines = [r.getMessage() for r in caplog.records if r.name == "edge.logins"]
    masked = number[:3] + "*" * (len(number) - 7) + number[-4:]
    assert any(f"{masked} locked for 1 s after 3 failed" in line for line in lines), lines
    assert any(f"{masked} locked for 2 s after 4 failed" in line for line in lines), lines
    assert any("login refused (locked limit)" in line for line in lines), lines
    for line in lines:
        assert number not in line and unknown not in line
        assert "wrong-guess" not in line and PASSWORD not in line


async def test_signups_are_limited_per_address_and_per_phone_number(system: System) -> None:
    limits = LoginLimits(signup_burst_per_ip=2, signups_per_min_per_ip=0.5)

    def body(number: str) -> dict[str, str]:
        return {"name": "Cy", "phone": number, "password": PASSWORD}

    async with system.another_edge(logins=limits) as edge:
        async with client(edge.url, source=address()) as http:
            first = [(await http.post("/v1/riders", json=body(phone()))).status_code for _ in "ab"]
            refused = await http.post("/v1/riders", json=body(phone()))
        assert first == [201, 201]
        assert_refused(refused, says="from this address")

        # One number tried from address after address: three answers, then a refusal.
        taken = phone()
        answers = []
        for _ in range(4):
            async with client(edge.url, source=address()) as http:
                answers.append(await http.post("/v1/riders", json=body(taken)))
    assert [r.status_code for r in answers[:3]] == [201, 409, 409]
    assert_refused(answers[3], says="this phone number")


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("password", "common"),
        ("aaaaaaaa", "repeated"),
        ("        ", "only spaces"),
        ("12345678", "consecutive"),
        ("short", "at least 8"),
    ],
)
async def test_a_weak_password_is_refused_at_signup_naming_the_rule(
    system: System, password: str, rule: str
) -> None:
    async with system.client() as http:
        r = await http.post(
            "/v1/riders", json={"name": "Di", "phone": phone(), "password": password}
        )
        number = phone()
        own = await http.post(
            "/v1/drivers",
            json={"name": "Ed", "phone": number, "password": number[1:], "license_number": "L1"},
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_argument"
    assert rule in r.json()["error"]["message"]
    assert own.status_code == 422, own.text
    assert "phone number" in own.json()["error"]["message"]


async def test_logins_and_signups_have_a_breaker_of_their_own(system: System) -> None:
    number = await signup_rider(system)
    async with system.client() as http:
        token = (await http.post("/v1/auth/token", json=login(number))).json()["access_token"]
    async with system.another_edge() as edge, client(edge.url, source=address()) as http:
        rider = edge.ctx.upstreams.by_name["rider"]
        for _ in range(system.settings.breaker_failures):
            rider.expensive_breaker.failure()  # as logins failing over and over would
        refused = await http.post("/v1/auth/token", json=login(number))
        reads = await http.get("/v1/me/trips", headers={"Authorization": f"Bearer {token}"})
        health = (await http.get("/healthz")).json()["upstreams"]["rider"]
    assert refused.status_code == 503, refused.text
    assert reads.status_code == 200, reads.text
    assert (health["breaker"], health["expensive_breaker"]) == ("closed", "open")


async def test_behind_a_trusted_proxy_the_login_limits_key_on_the_forwarded_client(
    system: System,
) -> None:
    proxy = address()
    limits = LoginLimits(login_burst_per_ip=2, logins_per_min_per_ip=0.5)
    trusted = parse_networks(proxy)
    async with (
        system.another_edge(logins=limits, trusted_proxies=trusted) as edge,
        client(edge.url, source=proxy) as http,
    ):

        async def attempt(forwarded_for: str) -> httpx.Response:
            return await http.post(
                "/v1/auth/token",
                json=login(phone(), "wrong-guess-1"),
                headers={"X-Forwarded-For": forwarded_for},
            )

        first = [(await attempt("203.0.113.7")).status_code for _ in "ab"]
        refused = await attempt("203.0.113.7")
        other = await attempt("198.51.100.9")
    assert first == [401, 401]
    assert_refused(refused, says="from this address")
    assert other.status_code == 401, other.text
