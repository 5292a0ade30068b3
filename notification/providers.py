"""Push and SMS providers: the interface a real gateway implements, and the shipped ones.

A provider sends one :class:`~notification.domain.Delivery` and returns where it went, or
raises :class:`ProviderError` (worth retrying later) or :class:`PermanentProviderError`
(retrying cannot help, e.g. no phone number). The delivery worker (delivery.py) stores every
attempt with its outcome, so a provider only talks to its gateway.

The shipped providers, :class:`LogPushProvider` and :class:`LogSmsProvider`, deliver to the
log: a real gateway (FCM/APNs, Twilio ...) needs credentials this project does not have. To
plug one in, implement :class:`Provider` and pass it to ``app.running(providers=...)``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from notification.domain import Channel, Delivery, NotificationError

__all__ = [
    "LogPushProvider",
    "LogSmsProvider",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
]

logger = logging.getLogger(__name__)


class ProviderError(NotificationError):
    """The provider could not deliver now; the worker retries with backoff."""


class PermanentProviderError(ProviderError):
    """The delivery can never succeed (no phone number, unknown device); no retry."""


class Provider(Protocol):
    """A gateway for one channel."""

    @property
    def name(self) -> str:
        """Recorded with each attempt, e.g. ``"twilio"``."""
        ...

    @property
    def channel(self) -> Channel:
        """The channel it delivers: PUSH or SMS."""
        ...

    async def send(self, delivery: Delivery) -> str:
        """Deliver, within the provider's own deadline; returns the destination (device,
        phone number) for the attempt history. ``delivery.id`` is stable across retries:
        pass it to the gateway as the idempotency key where the gateway has one."""
        ...


class LogPushProvider:
    """Push to the log: what a push gateway would show on the user's devices."""

    name = "log"
    channel = Channel.PUSH

    async def send(self, delivery: Delivery) -> str:
        destination = f"user:{delivery.user_id}"
        logger.info(
            "push %s to %s (attempt %d): %s: %s",
            delivery.kind,
            destination,
            delivery.attempt,
            delivery.title,
            delivery.body,
        )
        return destination


class LogSmsProvider:
    """SMS to the log, to the phone number the read model holds for the user."""

    name = "log"
    channel = Channel.SMS

    async def send(self, delivery: Delivery) -> str:
        if not delivery.phone:
            raise PermanentProviderError(f"no phone number known for user {delivery.user_id}")
        logger.info("sms to %s (attempt %d): %s", delivery.phone, delivery.attempt, delivery.body)
        return delivery.phone
