"""The trip state machine as data: one table of (state, command, actor) -> next state.

Modelled on h11's ``_state.py``: every state is a key of ``TRANSITIONS`` (terminal states map
to ``{}``), ``next_state`` is a lookup, and a miss raises ``InvalidTransition`` and changes
nothing. Guards that need data (only the offered driver may accept, the rider's cancellation
fee) are functions in ``domain.py`` that call ``next_state``.

Decisions the table encodes beyond the straight path
REQUESTED -> DISPATCHING -> ACCEPTED -> ARRIVED -> IN_PROGRESS -> COMPLETED:

* The rider may cancel until the ride starts (REQUESTED, DISPATCHING, ACCEPTED, ARRIVED).
* A driver never cancels a trip outright: ``DRIVER_CANCEL`` in ACCEPTED or ARRIVED sends it
  back to DISPATCHING without that driver, so the rider is not stranded. SYSTEM may issue it
  too, for the assigned driver going offline before pickup.
* Dispatch is SYSTEM's (``DISPATCH``, ``OFFER``, ``OFFER_EXPIRED``, ``EXHAUST``); answering an
  offer (``OFFER_ACCEPTED``, ``OFFER_DECLINED``) and driving (``ARRIVE``, ``START``,
  ``COMPLETE``) are the DRIVER's. ``OFFER``, ``OFFER_EXPIRED`` and ``OFFER_DECLINED`` keep the
  trip in DISPATCHING: they are transitions all the same, so each gets a version and a history
  record.
* IN_PROGRESS can be cancelled by ADMIN only. With the rider on board a driver "going
  offline" is almost always a lost connection, and the ride goes on. SYSTEM may cancel every
  other live state (dispatch and pickup timeouts).
* Every live state has a clock (``trip/liveness.py`` says which and when it runs out):
  ``REASSIGN`` is SYSTEM taking an ACCEPTED or ARRIVED trip from a driver whose app went
  silent, or who never reached the pickup, back to DISPATCHING without that driver (like
  ``DRIVER_CANCEL``, but the driver did not ask). ``FLAG`` marks an IN_PROGRESS ride whose
  driver went silent, for an operator to see; it keeps the state, so it gets a version and a
  history record like ``OFFER``. A ride silent for much longer is ended by SYSTEM with
  ``COMPLETE``: the rider was on board, so it is a ride that happened and is paid as quoted,
  not a cancellation. SYSTEM never cancels a ride in progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from trip.errors import InvalidTransition

__all__ = [
    "LIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Actor",
    "Command",
    "TripState",
    "allowed_actors",
    "next_state",
]


class TripState(StrEnum):
    """Where a trip is in its life cycle; the value is what the store writes."""

    REQUESTED = "REQUESTED"
    DISPATCHING = "DISPATCHING"
    ACCEPTED = "ACCEPTED"
    ARRIVED = "ARRIVED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    NO_DRIVERS = "NO_DRIVERS"


class Command(StrEnum):
    """What someone asks of a trip; the value names it in messages and in the history."""

    DISPATCH = "dispatch"
    OFFER = "offer"
    OFFER_ACCEPTED = "accept"
    OFFER_DECLINED = "decline"
    OFFER_EXPIRED = "expire_offer"
    EXHAUST = "exhaust"
    ARRIVE = "arrive"
    START = "start"
    COMPLETE = "complete"
    CANCEL = "cancel"
    DRIVER_CANCEL = "driver_cancel"
    REASSIGN = "reassign"
    FLAG = "flag"


class Actor(StrEnum):
    """Who performs a command."""

    RIDER = "RIDER"
    DRIVER = "DRIVER"
    SYSTEM = "SYSTEM"
    ADMIN = "ADMIN"


_TABLE: dict[TripState, dict[tuple[Command, Actor], TripState]] = {
    TripState.REQUESTED: {
        (Command.DISPATCH, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.CANCEL, Actor.RIDER): TripState.CANCELLED,
        (Command.CANCEL, Actor.SYSTEM): TripState.CANCELLED,
        (Command.CANCEL, Actor.ADMIN): TripState.CANCELLED,
    },
    TripState.DISPATCHING: {
        (Command.OFFER, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.OFFER_EXPIRED, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.OFFER_DECLINED, Actor.DRIVER): TripState.DISPATCHING,
        (Command.OFFER_ACCEPTED, Actor.DRIVER): TripState.ACCEPTED,
        (Command.EXHAUST, Actor.SYSTEM): TripState.NO_DRIVERS,
        (Command.CANCEL, Actor.RIDER): TripState.CANCELLED,
        (Command.CANCEL, Actor.SYSTEM): TripState.CANCELLED,
        (Command.CANCEL, Actor.ADMIN): TripState.CANCELLED,
    },
    TripState.ACCEPTED: {
        (Command.ARRIVE, Actor.DRIVER): TripState.ARRIVED,
        (Command.DRIVER_CANCEL, Actor.DRIVER): TripState.DISPATCHING,
        (Command.DRIVER_CANCEL, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.REASSIGN, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.CANCEL, Actor.RIDER): TripState.CANCELLED,
        (Command.CANCEL, Actor.SYSTEM): TripState.CANCELLED,
        (Command.CANCEL, Actor.ADMIN): TripState.CANCELLED,
    },
    TripState.ARRIVED: {
        (Command.START, Actor.DRIVER): TripState.IN_PROGRESS,
        (Command.DRIVER_CANCEL, Actor.DRIVER): TripState.DISPATCHING,
        (Command.DRIVER_CANCEL, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.REASSIGN, Actor.SYSTEM): TripState.DISPATCHING,
        (Command.CANCEL, Actor.RIDER): TripState.CANCELLED,
        (Command.CANCEL, Actor.SYSTEM): TripState.CANCELLED,
        (Command.CANCEL, Actor.ADMIN): TripState.CANCELLED,
    },
    TripState.IN_PROGRESS: {
        (Command.COMPLETE, Actor.DRIVER): TripState.COMPLETED,
        (Command.COMPLETE, Actor.SYSTEM): TripState.COMPLETED,
        (Command.FLAG, Actor.SYSTEM): TripState.IN_PROGRESS,
        (Command.CANCEL, Actor.ADMIN): TripState.CANCELLED,
    },
    TripState.COMPLETED: {},
    TripState.CANCELLED: {},
    TripState.NO_DRIVERS: {},
}

TRANSITIONS: Mapping[TripState, Mapping[tuple[Command, Actor], TripState]] = MappingProxyType(
    {state: MappingProxyType(moves) for state, moves in _TABLE.items()}
)
"""Every state -> {(command, actor): next state}; read-only, so nothing can patch it."""

TERMINAL_STATES: frozenset[TripState] = frozenset(
    s for s, moves in TRANSITIONS.items() if not moves
)
"""States a trip never leaves: COMPLETED, CANCELLED, NO_DRIVERS."""

LIVE_STATES: frozenset[TripState] = frozenset(TripState) - TERMINAL_STATES
"""States of a trip that has not ended; a rider has at most one trip in these."""


def allowed_actors(state: TripState, command: Command) -> tuple[Actor, ...]:
    """The actors who may issue ``command`` in ``state``, in ``Actor`` order; may be empty."""
    moves = TRANSITIONS[state]
    return tuple(actor for actor in Actor if (command, actor) in moves)


def next_state(state: TripState, command: Command, actor: Actor) -> TripState:
    """The state ``command`` by ``actor`` leads to from ``state``.

    Raises ``InvalidTransition`` ("cannot <command> when state=<STATE>") when the table has no
    such move; when the command is allowed in this state for someone else, the message also
    names the actor and who may.
    """
    try:
        return TRANSITIONS[state][command, actor]
    except KeyError:
        pass
    message = f"cannot {command} when state={state}"
    others = allowed_actors(state, command)
    if others:
        message += f" as {actor} (allowed for {', '.join(others)})"
    raise InvalidTransition(message)
