"""Two copies of the rider service on one schema: both run the payment worker over the same
charges (claimed CHARGING under a lease), and every completed trip is charged exactly once."""

from __future__ import annotations

import asyncio
import uuid

from protos import events
from protos.rider.v1 import rider_pb2 as pb
from rider.app import running
from rideshare.settings import InfraUrls, ServiceSettings
from tests.helpers import publish_event
from tests.integration.test_payments import (
    add_card,
    completed,
    intents_for,
    new_rider,
    outbox_subjects,
    payment_settings,
    rider_service,
    settled,
    trip_payments,
)

TRIPS = 12


async def test_two_copies_charge_every_completed_trip_once(
    infra: InfraUrls, unique_name: str
) -> None:
    second = ServiceSettings(name="rider", infra=infra, grpc_port=0, shutdown_grace_s=1.0)
    async with (
        asyncio.timeout(240),
        rider_service(infra, unique_name) as rig,
        # The second copy: the same schema and durable consumer, its own payment worker.
        running(second, payment_settings(infra), schema=unique_name, durable=unique_name),
    ):
        riders = [await new_rider(rig) for _ in range(TRIPS)]
        for rider in riders:
            await add_card(rig, rider.id)
        trips = [(rider.id, f"trip-{uuid.uuid4().hex[:8]}") for rider in riders]
        for rider_id, trip_id in trips:
            await publish_event(
                rig.js,
                events.TRIP_COMPLETED,
                completed(trip_id, rider_id),
                aggregate_id=trip_id,
                version=6,
            )
        payments = [
            await settled(rig, rider_id, trip_id, pb.PAYMENT_STATUS_SUCCEEDED)
            for rider_id, trip_id in trips
        ]
        for rider_id, trip_id in trips:
            assert len(await trip_payments(rig, rider_id, trip_id)) == 1
        for payment in payments:
            intents = await intents_for(rig.stripe, payment.id)
            assert [(i.status, i.amount) for i in intents] == [("succeeded", 1725)]
        assert (await outbox_subjects(rig)).count(events.RIDER_PAYMENT_SUCCEEDED) == TRIPS
