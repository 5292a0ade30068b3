"""The delivery worker: sends pending push and SMS deliveries through the providers, retries
failed ones with backoff, and stores every attempt.

Deliveries are rows written with their notification (store.insert_notifications). Every copy
of the service runs a worker; they share the rows through ``FOR UPDATE SKIP LOCKED`` and a
lease (store.claim_due_deliveries). The consumer wakes the worker of its own copy after a
commit; a poll covers retries that come due and rows left by other copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from notification.domain import Channel, Delivery, DeliveryOutcome, retry_delay_s
from notification.metrics import DELIVERY_ATTEMPTS
from notification.providers import PermanentProviderError, Provider
from notification.settings import DeliverySettings
from notification.store import NotificationStore
from rideshare.bus import reraise_if_cancelling
from rideshare.grpc_errors import log_round_failure

__all__ = ["DeliveryWorker"]

logger = logging.getLogger(__name__)


class DeliveryWorker:
    """Works the pending deliveries of the store until stopped."""

    def __init__(
        self,
        store: NotificationStore,
        providers: Mapping[Channel, Provider],
        settings: DeliverySettings,
    ) -> None:
        self._store = store
        self._providers = dict(providers)
        self._settings = settings
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New deliveries were committed: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send due deliveries until ``stop`` is set."""
        while not stop.is_set():
            reraise_if_cancelling()
            self._wake.clear()
            try:
                claimed = await self.run_once()
            except Exception as exc:
                reraise_if_cancelling()
                log_round_failure(logger, "delivery worker: claiming deliveries failed", exc)
                claimed = 0
            if claimed >= self._settings.batch:
                continue  # more may be due right away
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_s):
                    await _first(stop, self._wake)

    async def run_once(self) -> int:
        """Send one batch of due deliveries concurrently, then store every outcome at once;
        how many were claimed."""
        deliveries = await self._store.claim_due_deliveries(
            limit=self._settings.batch, lease_s=self._settings.lease_s
        )
        if not deliveries:
            return 0
        async with asyncio.TaskGroup() as group:
            sends = [group.create_task(self._send(delivery)) for delivery in deliveries]
        outcomes = [send.result() for send in sends]
        # If this fails, the leases run out and the deliveries are tried again.
        await self._store.record_attempts(outcomes)
        for outcome in outcomes:
            DELIVERY_ATTEMPTS.labels(outcome.delivery.channel.label, outcome.result).inc()
            if outcome.error is not None:
                logger.warning(
                    "%s delivery %d of notification %s, attempt %d: %s (%s)",
                    outcome.delivery.channel.label,
                    outcome.delivery.id,
                    outcome.delivery.notification_id,
                    outcome.delivery.attempt,
                    outcome.error,
                    "giving up"
                    if outcome.retry_in_s is None
                    else f"retry in {outcome.retry_in_s}s",
                )
        return len(deliveries)

    async def _send(self, delivery: Delivery) -> DeliveryOutcome:
        """One attempt through the channel's provider; never raises but for cancellation."""
        provider = self._providers.get(delivery.channel)
        destination = delivery.phone if delivery.channel is Channel.SMS else delivery.user_id
        if provider is None:
            error = f"no provider for channel {delivery.channel.label}"
            return DeliveryOutcome(delivery, "none", destination, error, None)
        try:
            async with asyncio.timeout(self._settings.send_timeout_s):
                destination = await provider.send(delivery)
        except PermanentProviderError as exc:
            error = f"{type(exc).__name__}: {exc}"
            return DeliveryOutcome(delivery, provider.name, destination, error, None)
        except Exception as exc:
            reraise_if_cancelling()
            error = f"{type(exc).__name__}: {exc}"
            retry_in_s = (
                retry_delay_s(
                    delivery.attempt,
                    base_s=self._settings.retry_base_s,
                    cap_s=self._settings.retry_cap_s,
                )
                if delivery.attempt < self._settings.max_attempts
                else None
            )
            return DeliveryOutcome(delivery, provider.name, destination, error, retry_in_s)
        return DeliveryOutcome(delivery, provider.name, destination, None, None)


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
