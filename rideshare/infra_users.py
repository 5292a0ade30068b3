"""Who may do what on Valkey and NATS: one user per service, with the least it needs.

The embedded servers (rideshare/infra.py) are started with these tables: Valkey with an ACL
file, NATS with a configuration file, both written 0600 into the data directory from
passwords made once per install (:func:`rideshare.secrets_dir.secret_file`, under
``<data_dir>/secrets/``). Each service connects as the user named like the service
(:meth:`rideshare.settings.InfraUrls.for_service`); ``admin`` is for the launcher, the
operator, benches and tests, and has every right. A server given from outside
(``RIDESHARE_REDIS_URL``, ``RIDESHARE_NATS_URL``) keeps the users its operator made.

Valkey: a service reaches only the keys under its prefix, with data commands and no
administrative, dangerous or pub/sub ones; the default user is off, so a client without a
password is refused (NOAUTH). Services that do not use Valkey have no user there.

NATS: a service publishes only its own events (through JetStream) and live subjects, and
subscribes only to its live subjects and its own reply inbox, ``_INBOX.<user>.>``
(:func:`inbox_prefix`; rideshare.bus.connect uses it), so no service reads another's
replies, including the messages its pull consumers fetch. The JetStream API is open to a
service on the one stream, and only for what the runtime does: create or update the stream,
create, read, delete and fetch from consumers, acknowledge. Consumer names are not narrowed
(tests give every copy a durable name of its own, and subject wildcards match whole tokens
only), so a service may touch another's consumer on the stream; it can neither publish
another service's events nor read another's inbox. The edge publishes nothing at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from protos.events import LOCATION_DRIVER_WILDCARD, NOTIFY_USER_WILDCARD, STREAM

__all__ = [
    "ADMIN",
    "NATS_USERS",
    "SECRETS_DIR",
    "VALKEY_USERS",
    "NatsRights",
    "ValkeyRights",
    "inbox_prefix",
    "nats_authorization",
    "valkey_acl",
]

ADMIN: Final = "admin"
# Where the passwords live, under the data directory: <server>-<user>, one file each.
SECRETS_DIR: Final = "secrets"
PASSWORD_BYTES: Final = 24


@dataclass(frozen=True)
class ValkeyRights:
    """A Valkey user's key patterns (ACL ``~pattern``) and commands (ACL rules)."""

    keys: Sequence[str]
    commands: str


# Data commands on the user's own keys, the Lua scripts they run (every redis.call inside
# a script is checked against the same rules), TIME (the rate limiter's clock), SELECT for a
# database of its own (tests), the slot map a cluster client routes by (CLUSTER SLOTS,
# SHARDS); nothing that flushes, inspects or reconfigures the server, and no pub/sub.
_DATA_COMMANDS: Final = (
    "-@all +@read +@write +@connection +@transaction +select "
    "+eval +evalsha +script|load +script|exists +time -@dangerous "
    "+cluster|slots +cluster|shards"
)

VALKEY_USERS: Final[Mapping[str, ValkeyRights]] = MappingProxyType(
    {
        "location": ValkeyRights(keys=("loc:*",), commands=_DATA_COMMANDS),
        "edge": ValkeyRights(keys=("edge:*",), commands=_DATA_COMMANDS),
    }
)
"""Service -> its Valkey rights; a service not listed has no Valkey user."""


@dataclass(frozen=True)
class NatsRights:
    """The subjects a NATS user may publish to and subscribe to (NATS wildcards)."""

    publish: Sequence[str]
    subscribe: Sequence[str]


def inbox_prefix(user: str | None) -> str:
    """The reply inbox prefix of ``user``: ``_INBOX.<user>`` (plain ``_INBOX`` without one)."""
    return f"_INBOX.{user}" if user else "_INBOX"


_JS: Final = "$JS.API"
# What rideshare.runtime and rideshare.bus do on the stream: ensure_stream, then durable
# pull consumers (DurableConsumer: create or update, info, delete to recreate, fetch, and
# ack/nak/term on the $JS.ACK reply subjects of the messages), and dead-lettering.
_JETSTREAM_USER: Final = (
    f"{_JS}.STREAM.CREATE.{STREAM}",
    f"{_JS}.STREAM.UPDATE.{STREAM}",
    f"{_JS}.CONSUMER.CREATE.{STREAM}.>",
    f"{_JS}.CONSUMER.INFO.{STREAM}.*",
    f"{_JS}.CONSUMER.DELETE.{STREAM}.*",
    f"{_JS}.CONSUMER.MSG.NEXT.{STREAM}.*",
    f"$JS.ACK.{STREAM}.>",
    "deadletter.*",
)


def _service(
    name: str, *, publish: Sequence[str] = (), subscribe: Sequence[str] = ()
) -> NatsRights:
    return NatsRights(
        publish=(*publish, *_JETSTREAM_USER),
        subscribe=(*subscribe, f"{inbox_prefix(name)}.>"),
    )


NATS_USERS: Final[Mapping[str, NatsRights]] = MappingProxyType(
    {
        "rider": _service("rider", publish=("rider.>",)),
        "driver": _service("driver", publish=("driver.>",)),
        "trip": _service("trip", publish=("trip.>",)),
        # The live feeds: every copy publishes what it accepted and serves watchers from it.
        "location": _service(
            "location", publish=(LOCATION_DRIVER_WILDCARD,), subscribe=(LOCATION_DRIVER_WILDCARD,)
        ),
        "notification": _service(
            "notification", publish=(NOTIFY_USER_WILDCARD,), subscribe=(NOTIFY_USER_WILDCARD,)
        ),
        # Reads what it pushes to sockets; publishes nothing (edge/live.py).
        "edge": NatsRights(
            publish=(),
            subscribe=("trip.>", NOTIFY_USER_WILDCARD, LOCATION_DRIVER_WILDCARD),
        ),
    }
)
"""Service -> its NATS rights."""


def valkey_acl(passwords: Mapping[str, str]) -> str:
    """An ACL file for ``valkey-server --aclfile``: the default user off, ``admin`` with every
    right, and each user of :data:`VALKEY_USERS`; ``passwords`` maps every one of them to its
    password. Passwords are stored as their SHA-256 (``#<hex>``), never in clear."""

    def password(user: str) -> str:
        return "#" + hashlib.sha256(passwords[user].encode()).hexdigest()

    lines = [
        "user default off resetpass resetkeys resetchannels -@all",
        f"user {ADMIN} on {password(ADMIN)} ~* &* +@all",
    ]
    for user, rights in VALKEY_USERS.items():
        keys = " ".join(f"~{pattern}" for pattern in rights.keys)
        lines.append(f"user {user} on {password(user)} {keys} resetchannels {rights.commands}")
    return "\n".join(lines) + "\n"


def nats_authorization(passwords: Mapping[str, str]) -> dict[str, object]:
    """The ``authorization`` block of a NATS configuration: ``admin`` with every right and
    each user of :data:`NATS_USERS`; ``passwords`` maps every one of them to its password."""
    users: list[dict[str, object]] = [
        {
            "user": ADMIN,
            "password": passwords[ADMIN],
            "permissions": {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}},
        }
    ]
    for user, rights in NATS_USERS.items():
        users.append(
            {
                "user": user,
                "password": passwords[user],
                "permissions": {
                    "publish": _allow(rights.publish),
                    "subscribe": _allow(rights.subscribe),
                },
            }
        )
    return {"users": users}


def _allow(subjects: Sequence[str]) -> dict[str, list[str]]:
    # An empty allow list would mean "no restriction": nothing allowed is a deny of all.
    return {"allow": list(subjects)} if subjects else {"deny": [">"]}
