from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protos.common.v1 import common_pb2
from rideshare.bus import (
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    make_envelope,
)


def test_an_envelope_survives_encoding_and_decoding_unchanged() -> None:
    payload = common_pb2.LatLng(lat=52.52, lng=13.405)
    envelope = make_envelope(
        payload,
        type="trip.accepted",
        aggregate_id="trip-1",
        aggregate_version=7,
        occurred_at=datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    )

    decoded = decode_envelope(encode_envelope(envelope))

    assert decoded == envelope
    assert decoded.unpack(common_pb2.LatLng) == payload


def test_a_new_envelope_gets_a_fresh_event_id_and_an_aware_time() -> None:
    first = make_envelope(common_pb2.LatLng(), type="t", aggregate_id="a", aggregate_version=1)
    second = make_envelope(common_pb2.LatLng(), type="t", aggregate_id="a", aggregate_version=1)

    assert first.event_id != second.event_id
    assert len(first.event_id) == 32
    assert first.occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"", common_pb2.LatLng(lat=1.0).SerializeToString()],
    ids=["garbage", "truncated", "empty", "another-message"],
)
def test_bytes_that_are_not_an_envelope_raise_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(data)


def test_a_payload_of_the_wrong_shape_raises_envelope_error_on_unpack() -> None:
    envelope = Envelope(
        event_id="e1",
        occurred_at=datetime.now(UTC),
        aggregate_id="a",
        aggregate_version=1,
        type="trip.accepted",
        payload=b"\xff\xff\xff",
    )

    with pytest.raises(EnvelopeError, match="e1"):
        envelope.unpack(common_pb2.LatLng)
