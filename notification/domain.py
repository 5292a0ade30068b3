"""The notification rules, pure: templates, rendering, page tokens, retry schedule.

No I/O and no protobuf here. An event reaches this module as *facts*: a flat mapping of
strings (``rider_id``, ``fare``, ``driver_name`` ...) that wire.py reads out of the payload
and events.py completes from the read model. A :class:`Template` (the one table of them is
templates.py) says who is told, what, and on which channels; :func:`render` turns template +
facts into a :class:`Notification`.
"""

from __future__ import annotations

import enum
import string
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rideshare import paging

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DRIVER_FIELDS",
    "MAX_PAGE_SIZE",
    "UNKNOWN_DRIVER_FACTS",
    "Channel",
    "Delivery",
    "DeliveryOutcome",
    "DriverVehicle",
    "InvalidArgumentError",
    "Notification",
    "NotificationError",
    "PageCursor",
    "Template",
    "cursor_after",
    "decode_page_token",
    "encode_page_token",
    "eta_minutes",
    "format_distance",
    "format_money",
    "from_us",
    "page_size",
    "parse_notification_ids",
    "plan",
    "render",
    "retry_delay_s",
    "to_us",
]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# Facts that come from the driver read model rather than from the event itself.
DRIVER_FIELDS = frozenset({"driver_name", "vehicle", "plate"})


class NotificationError(Exception):
    """Base of the notification service's errors."""


class InvalidArgumentError(NotificationError):
    """A request is malformed (empty user id, a page token from elsewhere, ...)."""


class Channel(enum.IntEnum):
    """A delivery channel; the values are those of ``rideshare.notification.v1.Channel``."""

    IN_APP = 1
    PUSH = 2
    SMS = 3

    @property
    def label(self) -> str:
        """The name stored in the database: ``in_app``, ``push``, ``sms``."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Channel:
        """The channel stored as ``label``; ValueError for an unknown one."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown channel {label!r}") from None


@dataclass(frozen=True)
class Template:
    """One notification an event produces.

    ``recipient`` names the fact holding the user id (``rider_id``, ``driver_id`` ...);
    ``title`` and ``body`` are ``str.format`` strings over the facts; ``data`` lists the facts
    copied into the notification's data map; ``when`` holds facts that must have exactly
    these values for the template to apply (``{"cancelled_by": "rider"}``).
    """

    recipient: str
    kind: str
    title: str
    body: str
    channels: tuple[Channel, ...]
    data: tuple[str, ...] = ()
    when: Mapping[str, str] = field(default_factory=dict)

    def fields(self) -> frozenset[str]:
        """Every fact this template reads."""
        used = {
            name
            for text in (self.title, self.body)
            for _, name, _, _ in string.Formatter().parse(text)
            if name
        }
        return frozenset(used | set(self.data) | set(self.when) | {self.recipient})


@dataclass(frozen=True)
class Notification:
    """One notification for one user; ``read_at`` is None while unread."""

    id: str
    user_id: str
    kind: str
    title: str
    body: str
    data: Mapping[str, str]
    trip_id: str
    channels: tuple[Channel, ...]
    event_id: str
    created_at: datetime
    read_at: datetime | None = None


@dataclass(frozen=True)
class DriverVehicle:
    """What a rider is told about their driver: the driver read model, from driver.online."""

    driver_id: str
    driver_name: str
    make: str
    model: str
    plate: str

    def facts(self) -> dict[str, str]:
        """The template facts it provides (see DRIVER_FIELDS)."""
        return {
            "driver_name": self.driver_name,
            "vehicle": f"{self.make} {self.model}".strip(),
            "plate": self.plate,
        }


# Told to a rider whose driver the read model does not know yet (driver.online not seen).
UNKNOWN_DRIVER_FACTS = {"driver_name": "Your driver", "vehicle": "car", "plate": "plate pending"}


@dataclass(frozen=True)
class Delivery:
    """One push or SMS delivery attempt to make: the notification and where it goes."""

    id: int
    attempt: int  # the number of this attempt, from 1
    channel: Channel
    notification_id: str
    user_id: str
    phone: str  # the recipient's phone number for SMS; empty when unknown
    kind: str
    title: str
    body: str
    data: Mapping[str, str]
    trip_id: str


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one attempt went: sent when ``error`` is None; otherwise retried after
    ``retry_in_s`` seconds, or given up when that is None."""

    delivery: Delivery
    provider: str
    destination: str
    error: str | None
    retry_in_s: float | None

    @property
    def result(self) -> str:
        """``sent``, ``retry`` or ``failed``."""
        if self.error is None:
            return "sent"
        return "failed" if self.retry_in_s is None else "retry"


def render(
    template: Template,
    facts: Mapping[str, str],
    *,
    event_id: str,
    created_at: datetime,
    notification_id: str | None = None,
) -> Notification | None:
    """The notification ``template`` makes of ``facts``; None when it does not apply (the
    recipient is unknown or a ``when`` condition fails). A fact the template needs but the
    event lacks is a programming error: KeyError."""
    user_id = facts.get(template.recipient, "")
    if not user_id:
        return None
    if any(facts.get(key) != value for key, value in template.when.items()):
        return None
    return Notification(
        id=notification_id if notification_id is not None else str(uuid.uuid4()),
        user_id=user_id,
        kind=template.kind,
        title=template.title.format_map(facts),
        body=template.body.format_map(facts),
        data={key: facts[key] for key in template.data},
        trip_id=facts.get("trip_id", ""),
        channels=template.channels,
        event_id=event_id,
        created_at=created_at,
    )


def plan(
    templates: Iterable[Template],
    facts: Mapping[str, str],
    *,
    event_id: str,
    created_at: datetime,
) -> list[Notification]:
    """Every notification one event makes: at most one per recipient (the first template
    that applies to a user wins, matching the store's unique (event_id, user_id))."""
    drafts: dict[str, Notification] = {}
    for template in templates:
        draft = render(template, facts, event_id=event_id, created_at=created_at)
        if draft is not None and draft.user_id not in drafts:
            drafts[draft.user_id] = draft
    return list(drafts.values())


# -- formatting of facts ---------------------------------------------------------------------


def format_money(amount_minor: int, currency: str) -> str:
    """``1250, "EUR"`` -> ``"12.50 EUR"`` (two minor digits, the common case)."""
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{cents:02d} {currency}".strip()


def eta_minutes(eta_s: int) -> int:
    """Whole minutes for display, at least 1."""
    return max(1, round(eta_s / 60))


def format_distance(metres: float) -> str:
    """``1234`` -> ``"1.2 km"``; under a kilometre in metres."""
    if metres < 1000:
        return f"{round(metres)} m"
    return f"{metres / 1000:.1f} km"


# -- retries of push and SMS -----------------------------------------------------------------


def retry_delay_s(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Seconds before the attempt after failed attempt number ``attempt`` (1-based):
    ``base_s``, doubling, at most ``cap_s``."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    return float(min(cap_s, base_s * 2 ** min(attempt - 1, 32)))


# -- ListNotifications -----------------------------------------------------------------------


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts: after (created_at_us, id), newest first, for these filters."""

    user_id: str
    unread_only: bool
    created_at_us: int
    notification_id: str


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (timestamptz has microsecond precision)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    """The moment ``micros`` microseconds after the epoch (UTC)."""
    return _EPOCH + timedelta(microseconds=micros)


def cursor_after(last: Notification, *, user_id: str, unread_only: bool) -> PageCursor:
    """Where the page after the one ending with ``last`` starts, for these filters."""
    return PageCursor(
        user_id=user_id,
        unread_only=unread_only,
        created_at_us=to_us(last.created_at),
        notification_id=last.id,
    )


def page_size(requested: int) -> int:
    """The page size to use: default for 0, clamped to the maximum, negative is an error."""
    if requested < 0:
        raise InvalidArgumentError(f"page_size must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _list_scope(user_id: str, unread_only: bool) -> str:
    return f"notification.list:{user_id}:{'unread' if unread_only else 'all'}"


def encode_page_token(cursor: PageCursor) -> str:
    """An opaque token for ``cursor``."""
    return paging.encode_page_token(
        _list_scope(cursor.user_id, cursor.unread_only),
        [from_us(cursor.created_at_us), cursor.notification_id],
    )


def decode_page_token(token: str, *, user_id: str, unread_only: bool) -> PageCursor:
    """The cursor in ``token``; InvalidArgumentError when it is malformed or was issued for
    another user or other filters."""
    try:
        created_at, notification_id = paging.decode_page_token(
            token, _list_scope(user_id, unread_only), key_types=(datetime, str)
        )
        assert isinstance(created_at, datetime)
        # The store compares it with a uuid column: anything else is not a position.
        notification_id = str(uuid.UUID(str(notification_id)))
    except paging.InvalidPageError as exc:
        raise InvalidArgumentError(str(exc)) from None
    except ValueError:
        raise InvalidArgumentError("page_token is malformed") from None
    return PageCursor(
        user_id=user_id,
        unread_only=unread_only,
        created_at_us=to_us(created_at),
        notification_id=notification_id,
    )


def parse_notification_ids(ids: Sequence[str]) -> list[str]:
    """The well-formed notification ids among ``ids``, normalised; others are ignored (an
    id that cannot exist is as unknown as one that does not)."""
    valid: list[str] = []
    for value in ids:
        try:
            valid.append(str(uuid.UUID(value)))
        except ValueError:
            continue
    return valid
