"""The one table of notifications: event subject -> what each person concerned is told.

Placeholders are facts that wire.py extracts from the event (``facts_of``) plus, for
``driver_name``, ``vehicle`` and ``plate``, the driver read model. ``data`` keys travel to the
app in ``Notification.data``. An event type missing here notifies nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from notification.domain import Channel, Template
from protos import events

__all__ = ["TEMPLATES"]

IN_APP: Final = (Channel.IN_APP,)
IN_APP_PUSH: Final = (Channel.IN_APP, Channel.PUSH)
ALL_CHANNELS: Final = (Channel.IN_APP, Channel.PUSH, Channel.SMS)

TEMPLATES: Final[Mapping[str, tuple[Template, ...]]] = MappingProxyType(
    {
        events.TRIP_OFFERED: (
            Template(
                recipient="driver_id",
                kind="trip.offer",
                title="New trip request",
                body="Pickup {pickup}, {distance_to_pickup} away. Fare {fare}.",
                channels=IN_APP_PUSH,
                data=("offer_id", "expires_at", "fare", "pickup", "distance_to_pickup_m"),
            ),
        ),
        events.TRIP_ACCEPTED: (
            Template(
                recipient="rider_id",
                kind="trip.driver_assigned",
                title="Your driver is on the way",
                body="{driver_name} is coming in a {vehicle} ({plate}), about {eta_min} min away.",
                channels=IN_APP_PUSH,
                data=("driver_id", "driver_name", "vehicle", "plate", "eta_s"),
            ),
        ),
        events.TRIP_ARRIVED: (
            Template(
                recipient="rider_id",
                kind="trip.driver_arrived",
                title="Your driver has arrived",
                body="{driver_name} is waiting at the pickup in a {vehicle} ({plate}).",
                channels=ALL_CHANNELS,
                data=("driver_id", "driver_name", "vehicle", "plate"),
            ),
        ),
        events.TRIP_STARTED: (
            Template(
                recipient="rider_id",
                kind="trip.started",
                title="Trip started",
                body="You are on your way. Enjoy the ride.",
                channels=IN_APP,
                data=("driver_id",),
            ),
        ),
        events.TRIP_COMPLETED: (
            Template(
                recipient="rider_id",
                kind="trip.completed",
                title="Trip completed",
                body="You paid {fare} for {distance} in {duration_min} min.",
                channels=IN_APP_PUSH,
                data=("fare", "fare_minor", "currency", "distance_m", "duration_s"),
                when={"completed_by": "driver"},
            ),
            Template(
                recipient="rider_id",
                kind="trip.ended_by_service",
                title="We ended your trip",
                body=(
                    "We lost contact with your driver's app during the ride, so we ended the "
                    "trip. You were charged the quoted fare of {fare}. If that is wrong, "
                    "contact support."
                ),
                channels=ALL_CHANNELS,
                data=("fare", "fare_minor", "currency", "reason", "charge_basis"),
                when={"completed_by": "service"},
            ),
            Template(
                recipient="driver_id",
                kind="trip.ended_by_service",
                title="Your trip was ended",
                body=(
                    "We had no location from your app for too long, so we ended the trip at "
                    "the quoted fare of {fare}. You can take new trips now."
                ),
                channels=IN_APP_PUSH,
                data=("fare", "reason"),
                when={"completed_by": "service"},
            ),
        ),
        events.TRIP_NO_DRIVERS: (
            Template(
                recipient="rider_id",
                kind="trip.no_drivers",
                title="No drivers available",
                body="We could not find a driver near you. Please try again in a few minutes.",
                channels=IN_APP_PUSH,
            ),
        ),
        events.TRIP_DRIVER_CANCELLED: (
            Template(
                recipient="rider_id",
                kind="trip.driver_cancelled",
                title="Your driver cancelled",
                body="Your driver had to cancel. We are finding you another one.",
                channels=IN_APP_PUSH,
                when={"released_by": "driver"},
            ),
            Template(
                recipient="rider_id",
                kind="trip.driver_replaced",
                title="Finding you another driver",
                body="{rider_text} We are finding you another one.",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"released_by": "service"},
            ),
            Template(
                recipient="driver_id",
                kind="trip.reassigned",
                title="Trip reassigned",
                body="{driver_text} The trip went to another driver.",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"released_by": "service"},
            ),
        ),
        events.TRIP_CANCELLED: (
            Template(
                recipient="rider_id",
                kind="trip.cancelled_by_driver",
                title="Your trip was cancelled",
                body="Your driver cancelled the trip.",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"cancelled_by": "driver"},
            ),
            Template(
                recipient="driver_id",
                kind="trip.rider_cancelled",
                title="The rider cancelled",
                body="The rider cancelled the trip. You can take new trips now.",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"cancelled_by": "rider"},
            ),
            Template(
                recipient="rider_id",
                kind="trip.cancelled",
                title="Your trip was cancelled",
                body="We had to cancel your trip. {fee_text}",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"cancelled_by": "service"},
            ),
            Template(
                recipient="driver_id",
                kind="trip.cancelled",
                title="Trip cancelled",
                body="The trip was cancelled. You can take new trips now.",
                channels=IN_APP_PUSH,
                data=("reason",),
                when={"cancelled_by": "service"},
            ),
        ),
        events.TRIP_RATED: (
            Template(
                recipient="ratee_id",
                kind="trip.rated",
                title="You were rated",
                body="Your trip got a {stars}-star rating.",
                channels=IN_APP,
                data=("stars",),
            ),
        ),
        events.RIDER_CREATED: (
            Template(
                recipient="rider_id",
                kind="account.welcome",
                title="Welcome to Rideshare",
                body="Hi {name}, you are ready to ride.",
                channels=IN_APP,
            ),
        ),
        events.RIDER_PAYMENT_SUCCEEDED: (
            Template(
                recipient="rider_id",
                kind="payment.receipt",
                title="Receipt",
                body="{amount} for your {what} charged to the card ending {card_last4}.",
                channels=IN_APP,
                data=("payment_id", "amount", "amount_minor", "currency", "card_last4", "kind"),
            ),
        ),
        events.RIDER_PAYMENT_FAILED: (
            Template(
                recipient="rider_id",
                kind="payment.failed",
                title="Payment failed",
                body=(
                    "We could not charge {amount} for your {what} to the card ending "
                    "{card_last4}. Add a payment method to settle it and book again."
                ),
                channels=IN_APP_PUSH,
                data=("payment_id", "amount", "amount_minor", "currency", "reason", "kind"),
            ),
        ),
        events.RIDER_PAYMENT_REFUNDED: (
            Template(
                recipient="rider_id",
                kind="payment.refunded",
                title="Refund",
                body="We refunded {amount} of your trip's payment.",
                channels=IN_APP,
                data=("payment_id", "amount", "amount_minor", "currency"),
            ),
        ),
        events.DRIVER_CREATED: (
            Template(
                recipient="driver_id",
                kind="account.welcome",
                title="Welcome to Rideshare",
                body="Hi {name}, add a vehicle and go online to receive trip requests.",
                channels=IN_APP,
            ),
        ),
    }
)
