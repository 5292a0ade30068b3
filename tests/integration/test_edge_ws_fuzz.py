"""A property-based fuzz of the WebSocket frames (Hypothesis), before and after auth, for
riders and drivers, over real services: whatever a client sends, the edge answers with a frame
or a close code edge/wire.py documents, and never logs an unhandled exception.

Frames: arbitrary JSON values, frames shaped like the contract's with wrong types and edge
values (huge integers, NaN, lone surrogates), deep nesting, random text and bytes.
Deterministic (derandomized, no example database) and bounded: well under a minute.

The socket clients are websockets' blocking ones, in a worker thread: Hypothesis drives plain
functions, and the edge keeps serving in the test's event loop meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from rideshare.settings import InfraUrls
from tests.integration.edge_system import System, describe, edge_system, logged_errors
from tests.integration.test_edge import signup_driver, signup_rider

EXAMPLES_BEFORE_AUTH = 40
EXAMPLES_AFTER_AUTH = 60  # per role
RECV_TIMEOUT_S = 10.0
FUZZ_TIMEOUT_S = 120.0

# The oracle, written out from edge/wire.py's docstring: what the edge may send a client.
FRAME_TYPES = {"error", "ping", "trip", "offer", "offer_ended", "notification", "driver_position"}
ERROR_CODES = {
    "bad_json",
    "too_deep",
    "bad_message",
    "unknown_type",
    "too_large",
    "rate_limited",
    "invalid_position",
}
CLOSE_UNAUTHENTICATED = 4401

FIELDS = ("type", "token", "lat", "lng", "heading", "speed_mps", "accuracy_m", "ts_ms")
odd_strings = st.sampled_from(["", "\x00", "\ud800", "\udfff", "NaN", "1e999", "position", "auth"])
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**1100), max_value=2**1100),  # beyond a double
    st.floats(),  # NaN and infinities included (json.dumps writes them)
    st.floats(min_value=-1e13, max_value=2e12),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), odd_strings)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_types = st.sampled_from(["auth", "pong", "position", "ping", "offer", "trip", "error"])
near_contract = st.fixed_dictionaries(
    {"type": frame_types | json_values},
    optional={name: numbers | json_values for name in FIELDS[1:]},
)
auths = st.fixed_dictionaries({"type": st.just("auth"), "token": scalars | json_values})
positions = st.fixed_dictionaries(
    {
        "type": st.just("position"),
        "lat": st.floats(-90, 90) | numbers,
        "lng": st.floats(-180, 180) | numbers,
    },
    optional={name: numbers | scalars for name in FIELDS[4:]},
)


def dumps(value: Any) -> str:
    return json.dumps(value)


# What broke the edge once, always tried first.
DEEP = "[" * 4000
SURROGATE_TOKEN = dumps({"type": "auth", "token": "\ud800"})
HUGE_LAT = dumps({"type": "position", "lat": 10**400, "lng": 13.4})


text_frames = st.one_of(
    json_values.map(dumps),
    near_contract.map(dumps),
    auths.map(dumps),
    positions.map(dumps),
    st.text(max_size=200),
    st.text(alphabet='[]{}",:\\ 1a.e-', max_size=300),  # JSON's punctuation, shuffled
    st.integers(1, 6000).map(lambda n: "[" * n),
    st.integers(1, 1500).map(lambda n: '{"type": "pong", "a": ' * n),
    st.integers(4000, 6000).map(lambda n: dumps({"type": "position", "pad": "x" * n})),
)
frames = st.one_of(text_frames, st.binary(max_size=300), near_contract.map(dumps).map(str.encode))


@pytest.fixture(scope="module")
async def system(infra: InfraUrls) -> AsyncIterator[System]:
    async with edge_system(infra, f"t_{uuid.uuid4().hex[:8]}") as system:
        yield system


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def shown(sent: list[str | bytes]) -> list[str]:
    """The frames of a failing example, each cut short: some are kilobytes of brackets."""
    return [f"{frame[:120]!r} ({len(frame)} long)" for frame in sent]


def check_reply(raw: str | bytes, sent: list[str | bytes]) -> dict[str, Any]:
    """A frame from the edge, checked against the contract."""
    assert isinstance(raw, str), f"a binary frame from the edge after {shown(sent)}"
    frame: dict[str, Any] = json.loads(raw)
    assert frame.get("type") in FRAME_TYPES, (frame, shown(sent))
    if frame["type"] == "error":
        assert frame.get("code") in ERROR_CODES, (frame, shown(sent))
        assert isinstance(frame.get("message"), str), (frame, shown(sent))
    return frame


def before_auth(ws_url: str) -> None:
    """Any first frame that is not a valid auth message: an error frame, then 4401."""

    @fuzz_settings(EXAMPLES_BEFORE_AUTH)
    @given(frame=frames)
    @example(frame=DEEP)
    @example(frame=SURROGATE_TOKEN)
    def first_frame(frame: str | bytes) -> None:
        with connect(f"{ws_url}/v1/ws/driver", open_timeout=RECV_TIMEOUT_S) as ws:
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
            assert reply["type"] == "error", (reply, shown([frame]))
            assert reply["code"] == "unauthenticated", (reply, shown([frame]))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=RECV_TIMEOUT_S)
            assert closed.value.rcvd is not None, shown([frame])
            assert closed.value.rcvd.code == CLOSE_UNAUTHENTICATED, (closed.value, shown([frame]))

    first_frame()


def after_auth(ws_url: str, path: str, token: str) -> None:
    """Any frames on an authenticated socket: documented frames only, and it stays open.

    Each example ends with a marker message (an unknown type): its error frame is the last
    answer to the example, so every answer is read before the next example starts."""
    markers = itertools.count()
    with connect(f"{ws_url}{path}?token={token}", open_timeout=RECV_TIMEOUT_S) as ws:

        @fuzz_settings(EXAMPLES_AFTER_AUTH)
        @given(sent=st.lists(frames, min_size=1, max_size=4))
        @example(sent=[DEEP, HUGE_LAT, SURROGATE_TOKEN])
        def some_frames(sent: list[str | bytes]) -> None:
            marker = f"fuzz-end-{next(markers)}"
            for frame in sent:
                ws.send(frame)
            ws.send(json.dumps({"type": marker}))
            read_until_marker(ws, marker, sent)

        some_frames()


def read_until_marker(ws: ClientConnection, marker: str, sent: list[str | bytes]) -> None:
    try:
        while True:
            frame = check_reply(ws.recv(timeout=RECV_TIMEOUT_S), sent)
            if frame["type"] == "error" and marker in frame["message"]:
                return
    except ConnectionClosed as exc:
        raise AssertionError(f"the edge closed the socket ({exc}) after {shown(sent)}") from None


async def test_any_frame_gets_a_documented_answer_and_no_unhandled_exception(
    system: System,
) -> None:
    _, rider_token = await signup_rider(system)
    _, driver_token = await signup_driver(system, online=True)
    # Message limits out of the way, so the frames reach the parser (the limits have tests
    # of their own in test_edge_limits.py).
    async with system.another_edge(ws_msgs_per_s=10_000.0, ws_msgs_burst=10_000) as edge:
        ws_url = edge.url.replace("http://", "ws://")
        with logged_errors() as errors:
            async with asyncio.timeout(FUZZ_TIMEOUT_S):
                await asyncio.to_thread(before_auth, ws_url)
                await asyncio.to_thread(after_auth, ws_url, "/v1/ws/rider", rider_token)
                await asyncio.to_thread(after_auth, ws_url, "/v1/ws/driver", driver_token)
    assert not errors, describe(errors)
