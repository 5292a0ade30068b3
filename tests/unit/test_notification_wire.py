"""Notification's wire conversions that are not about template facts (see
test_notification_templates.py for those)."""

from __future__ import annotations

import pytest

from notification import wire
from notification.domain import Channel, InvalidArgumentError
from protos.notification.v1 import notification_pb2 as pb


@pytest.mark.parametrize("channel", list(Channel), ids=lambda c: c.name)
def test_every_channel_has_the_wire_value_of_the_same_name(channel: Channel) -> None:
    assert pb.Channel.Name(wire.channel_to_proto(channel)) == f"CHANNEL_{channel.name}"


@pytest.mark.parametrize("user_id", ["", "a.b", "a b", "a*", "a>"])
def test_a_user_id_that_cannot_name_a_live_subject_is_an_invalid_argument(user_id: str) -> None:
    with pytest.raises(InvalidArgumentError):
        wire.user_id_of(user_id)


def test_a_plain_user_id_is_taken_as_it_is() -> None:
    assert wire.user_id_of("r-1f2e") == "r-1f2e"
