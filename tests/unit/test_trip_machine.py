"""The trip state machine against a table of expected outcomes written out by hand.

``EXPECTED`` lists, in plain strings, every (state, command, actor) that is allowed and where
it leads; every other triple must be rejected. It is deliberately not derived from
``TRANSITIONS``: a change to the machine has to be made twice, once here on purpose.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from trip.errors import InvalidTransition, TripError
from trip.machine import (
    LIVE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Actor,
    Command,
    TripState,
    allowed_actors,
    next_state,
)

# (state, command value, actor) -> next state. Anything absent is an InvalidTransition.
EXPECTED: dict[tuple[str, str, str], str] = {
    ("REQUESTED", "dispatch", "SYSTEM"): "DISPATCHING",
    ("REQUESTED", "cancel", "RIDER"): "CANCELLED",
    ("REQUESTED", "cancel", "SYSTEM"): "CANCELLED",
    ("REQUESTED", "cancel", "ADMIN"): "CANCELLED",
    ("DISPATCHING", "offer", "SYSTEM"): "DISPATCHING",
    ("DISPATCHING", "expire_offer", "SYSTEM"): "DISPATCHING",
    ("DISPATCHING", "decline", "DRIVER"): "DISPATCHING",
    ("DISPATCHING", "accept", "DRIVER"): "ACCEPTED",
    ("DISPATCHING", "exhaust", "SYSTEM"): "NO_DRIVERS",
    ("DISPATCHING", "cancel", "RIDER"): "CANCELLED",
    ("DISPATCHING", "cancel", "SYSTEM"): "CANCELLED",
    ("DISPATCHING", "cancel", "ADMIN"): "CANCELLED",
    ("ACCEPTED", "arrive", "DRIVER"): "ARRIVED",
    ("ACCEPTED", "driver_cancel", "DRIVER"): "DISPATCHING",
    ("ACCEPTED", "driver_cancel", "SYSTEM"): "DISPATCHING",
    ("ACCEPTED", "reassign", "SYSTEM"): "DISPATCHING",
    ("ACCEPTED", "cancel", "RIDER"): "CANCELLED",
    ("ACCEPTED", "cancel", "SYSTEM"): "CANCELLED",
    ("ACCEPTED", "cancel", "ADMIN"): "CANCELLED",
    ("ARRIVED", "start", "DRIVER"): "IN_PROGRESS",
    ("ARRIVED", "driver_cancel", "DRIVER"): "DISPATCHING",
    ("ARRIVED", "driver_cancel", "SYSTEM"): "DISPATCHING",
    ("ARRIVED", "reassign", "SYSTEM"): "DISPATCHING",
    ("ARRIVED", "cancel", "RIDER"): "CANCELLED",
    ("ARRIVED", "cancel", "SYSTEM"): "CANCELLED",
    ("ARRIVED", "cancel", "ADMIN"): "CANCELLED",
    ("IN_PROGRESS", "complete", "DRIVER"): "COMPLETED",
    ("IN_PROGRESS", "complete", "SYSTEM"): "COMPLETED",
    ("IN_PROGRESS", "flag", "SYSTEM"): "IN_PROGRESS",
    ("IN_PROGRESS", "cancel", "ADMIN"): "CANCELLED",
}

ALL_TRIPLES = list(itertools.product(TripState, Command, Actor))


def test_expected_table_names_only_real_states_commands_and_actors() -> None:
    states = {s.value for s in TripState}
    commands = {c.value for c in Command}
    actors = {a.value for a in Actor}
    for (state, command, actor), target in EXPECTED.items():
        assert {state, target} <= states
        assert command in commands
        assert actor in actors


@pytest.mark.parametrize(
    ("state", "command", "actor"), ALL_TRIPLES, ids=lambda v: str(getattr(v, "value", v))
)
def test_every_state_command_and_actor_has_the_expected_outcome(
    state: TripState, command: Command, actor: Actor
) -> None:
    expected = EXPECTED.get((state.value, command.value, actor.value))
    if expected is None:
        with pytest.raises(InvalidTransition, match=f"^cannot {command.value} when state={state}"):
            next_state(state, command, actor)
    else:
        assert next_state(state, command, actor) is TripState(expected)


def test_transitions_has_every_state_as_a_key() -> None:
    assert set(TRANSITIONS) == set(TripState)


def test_terminal_states_are_completed_cancelled_and_no_drivers_with_no_transitions() -> None:
    assert {TripState.COMPLETED, TripState.CANCELLED, TripState.NO_DRIVERS} == TERMINAL_STATES
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == {}


def test_live_states_are_every_state_that_is_not_terminal() -> None:
    assert LIVE_STATES == {
        TripState.REQUESTED,
        TripState.DISPATCHING,
        TripState.ACCEPTED,
        TripState.ARRIVED,
        TripState.IN_PROGRESS,
    }
    assert not LIVE_STATES & TERMINAL_STATES


def _reachable(start: TripState) -> set[TripState]:
    seen = {start}
    queue = deque([start])
    while queue:
        for target in TRANSITIONS[queue.popleft()].values():
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def test_every_state_is_reachable_from_requested() -> None:
    assert _reachable(TripState.REQUESTED) == set(TripState)


@pytest.mark.parametrize("state", sorted(LIVE_STATES))
def test_every_live_state_can_reach_a_terminal_state(state: TripState) -> None:
    assert _reachable(state) & TERMINAL_STATES


@pytest.mark.parametrize("state", sorted(LIVE_STATES))
def test_admin_can_cancel_every_live_state(state: TripState) -> None:
    assert next_state(state, Command.CANCEL, Actor.ADMIN) is TripState.CANCELLED


def test_rider_cannot_cancel_once_the_ride_is_in_progress() -> None:
    with pytest.raises(
        InvalidTransition,
        match=r"^cannot cancel when state=IN_PROGRESS as RIDER \(allowed for ADMIN\)$",
    ):
        next_state(TripState.IN_PROGRESS, Command.CANCEL, Actor.RIDER)


def test_system_cannot_cancel_a_ride_in_progress() -> None:
    with pytest.raises(InvalidTransition, match="as SYSTEM"):
        next_state(TripState.IN_PROGRESS, Command.CANCEL, Actor.SYSTEM)


def test_driver_cancel_sends_the_trip_back_to_dispatch_instead_of_ending_it() -> None:
    for state in (TripState.ACCEPTED, TripState.ARRIVED):
        assert next_state(state, Command.DRIVER_CANCEL, Actor.DRIVER) is TripState.DISPATCHING


def test_only_the_system_reassigns_a_trip_and_only_before_the_ride() -> None:
    for state in (TripState.ACCEPTED, TripState.ARRIVED):
        assert allowed_actors(state, Command.REASSIGN) == (Actor.SYSTEM,)
        assert next_state(state, Command.REASSIGN, Actor.SYSTEM) is TripState.DISPATCHING
    with pytest.raises(InvalidTransition, match=r"^cannot reassign when state=IN_PROGRESS$"):
        next_state(TripState.IN_PROGRESS, Command.REASSIGN, Actor.SYSTEM)


def test_a_flag_keeps_the_ride_in_progress_and_the_system_may_end_it_as_completed() -> None:
    assert next_state(TripState.IN_PROGRESS, Command.FLAG, Actor.SYSTEM) is TripState.IN_PROGRESS
    assert allowed_actors(TripState.IN_PROGRESS, Command.COMPLETE) == (Actor.DRIVER, Actor.SYSTEM)
    with pytest.raises(InvalidTransition, match=r"^cannot flag when state=ARRIVED$"):
        next_state(TripState.ARRIVED, Command.FLAG, Actor.SYSTEM)


def test_rejection_without_another_allowed_actor_names_only_command_and_state() -> None:
    with pytest.raises(InvalidTransition) as caught:
        next_state(TripState.REQUESTED, Command.START, Actor.DRIVER)
    assert str(caught.value) == "cannot start when state=REQUESTED"


def test_rejection_names_who_may_when_the_command_exists_for_another_actor() -> None:
    with pytest.raises(InvalidTransition) as caught:
        next_state(TripState.ACCEPTED, Command.CANCEL, Actor.DRIVER)
    assert str(caught.value) == (
        "cannot cancel when state=ACCEPTED as DRIVER (allowed for RIDER, SYSTEM, ADMIN)"
    )


def test_invalid_transition_is_a_trip_error() -> None:
    assert issubclass(InvalidTransition, TripError)


def test_allowed_actors_lists_who_may_issue_a_command_in_a_state() -> None:
    assert allowed_actors(TripState.DISPATCHING, Command.OFFER_ACCEPTED) == (Actor.DRIVER,)
    assert allowed_actors(TripState.COMPLETED, Command.CANCEL) == ()


def test_transitions_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[TripState.COMPLETED] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        TRANSITIONS[TripState.REQUESTED][Command.START, Actor.DRIVER] = TripState.ACCEPTED  # type: ignore[index]
