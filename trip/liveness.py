"""No trip stays live for ever: each live state's clock, and what happens when it runs out.

Pure: no I/O, no clock. The sweeper (``trip/sweeper.py``) asks the location service when the
trip's driver last reported a position, then ``decide`` says what, if anything, is due.

The policy, state by state (the limits are ``LivenessPolicy`` fields, set from
``RIDESHARE_*`` variables in ``trip/settings.py``):

* REQUESTED, DISPATCHING: dispatch ends these itself (offer timeouts, radius steps,
  ``max_wait``), but only while it runs: with the location service down it cannot search, and
  the trip would wait. Past ``dispatch_limit`` since dispatch (re)started, a DISPATCHING trip
  ends NO_DRIVERS and a REQUESTED one (dispatch never began) is cancelled by SYSTEM.
* ACCEPTED, ARRIVED: the driver is *silent* when neither a position nor a command of theirs
  (accept, arrive) came in for ``driver_silent``. A silent driver is released and excluded,
  and the trip goes back to DISPATCHING (``reassign``); dispatch then finds someone else or
  ends NO_DRIVERS as it always does. A driver who keeps reporting but is still not at the
  pickup after ``pickup_limit`` is reassigned the same way. A driver at the pickup whose ride
  does not start within ``boarding_wait`` (the rider did not come, or an app stopped calling)
  ends the trip: cancelled by SYSTEM, without a fee, since nothing tells whose fault it was.
  Silence is checked first: at a pickup with a silent driver the rider still wants a ride.
* IN_PROGRESS: the rider is on board, so silence does not end the ride at once. After
  ``ride_silent_flag`` the ride is flagged for an operator (once per silence: a driver heard
  again and silent again is flagged again); after ``ride_silent_end`` SYSTEM completes it at
  the upfront quote (``domain.end_ride``), and the rider is told why.
* Any live state: a trip older than ``max_life`` ends (a ride in progress is completed at the
  quote, anything else cancelled by SYSTEM), whatever else is known.

"Unknown" is never "silent": when the location service cannot be asked or has no position
for the driver (it may have restarted empty), the silence rules skip that round, and only the
rules that need no position (pickup, boarding, dispatch and life limits) apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from trip.domain import InvalidArgumentError, Trip, TripState

__all__ = [
    "Cancel",
    "Cutoffs",
    "EndRide",
    "Exhaust",
    "Flag",
    "Heard",
    "LivenessPolicy",
    "LivenessRule",
    "Reassign",
    "SweepAction",
    "cutoffs",
    "decide",
    "last_heard",
]


class LivenessRule(StrEnum):
    """Which clock ran out; the value travels in events as a reason code."""

    DRIVER_SILENT = "DRIVER_SILENT"
    PICKUP_TOO_LONG = "PICKUP_TOO_LONG"
    BOARDING_TOO_LONG = "BOARDING_TOO_LONG"
    RIDE_SILENT = "RIDE_SILENT"
    DISPATCH_STALLED = "DISPATCH_STALLED"
    TRIP_TOO_OLD = "TRIP_TOO_OLD"


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """The limits of every live state; see the module docstring for what each one ends."""

    driver_silent: timedelta = timedelta(seconds=60)
    pickup_limit: timedelta = timedelta(minutes=20)
    boarding_wait: timedelta = timedelta(minutes=10)
    ride_silent_flag: timedelta = timedelta(minutes=2)
    ride_silent_end: timedelta = timedelta(minutes=15)
    dispatch_limit: timedelta = timedelta(minutes=5)
    max_life: timedelta = timedelta(hours=8)

    def __post_init__(self) -> None:
        for name in (
            "driver_silent",
            "pickup_limit",
            "boarding_wait",
            "ride_silent_flag",
            "ride_silent_end",
            "dispatch_limit",
            "max_life",
        ):
            if getattr(self, name) <= timedelta(0):
                raise InvalidArgumentError(f"{name} must be positive")
        if self.ride_silent_flag >= self.ride_silent_end:
            raise InvalidArgumentError("ride_silent_flag must be shorter than ride_silent_end")
        if self.max_life <= self.dispatch_limit:
            raise InvalidArgumentError("max_life must be longer than dispatch_limit")


@dataclass(frozen=True, slots=True)
class Heard:
    """What the location service knows of a driver: their last position's server time."""

    driver_id: str
    last_position_at: datetime


@dataclass(frozen=True, slots=True)
class Reassign:
    """Take the trip from ``driver_id`` and dispatch it again without them."""

    driver_id: str
    rule: LivenessRule
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the trip as CANCELLED by SYSTEM."""

    rule: LivenessRule
    reason: str


@dataclass(frozen=True, slots=True)
class Exhaust:
    """End the DISPATCHING trip as NO_DRIVERS."""

    rule: LivenessRule
    reason: str


@dataclass(frozen=True, slots=True)
class Flag:
    """Flag the ride for an operator; ``silent_since`` is when the driver was last heard."""

    rule: LivenessRule
    reason: str
    silent_since: datetime


@dataclass(frozen=True, slots=True)
class EndRide:
    """Complete the ride at the quote; ``last_heard`` is the driver's last sign, if known."""

    rule: LivenessRule
    reason: str
    last_heard: datetime | None


SweepAction = Reassign | Cancel | Exhaust | Flag | EndRide


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Which live trips may be due at one instant: a trip whose clock started at or before
    its state's cutoff (see ``cutoffs``). A superset of what ``decide`` acts on."""

    dispatch_started: datetime
    """REQUESTED/DISPATCHING: dispatch (re)started at or before this."""
    accepted: datetime
    """ACCEPTED: accepted at or before this."""
    arrived: datetime
    """ARRIVED: arrived at or before this."""
    started: datetime
    """IN_PROGRESS: started at or before this."""
    requested: datetime
    """Any live state: requested at or before this (the life cap)."""


def cutoffs(now: datetime, policy: LivenessPolicy) -> Cutoffs:
    """The cutoffs at ``now``: no rule can apply to a trip younger in its state than these."""
    return Cutoffs(
        dispatch_started=now - policy.dispatch_limit,
        accepted=now - min(policy.driver_silent, policy.pickup_limit),
        arrived=now - min(policy.driver_silent, policy.boarding_wait),
        started=now - policy.ride_silent_flag,
        requested=now - policy.max_life,
    )


def last_heard(trip: Trip, heard: Heard | None) -> datetime | None:
    """The driver's last sign of life: the later of their last position and their last
    command on this trip (accept, arrive, start). None when location could not say."""
    if heard is None or trip.driver_id is None or heard.driver_id != trip.driver_id:
        return None
    signs = [heard.last_position_at, trip.accepted_at, trip.arrived_at, trip.started_at]
    return max(sign for sign in signs if sign is not None)


def decide(
    trip: Trip, *, now: datetime, policy: LivenessPolicy, heard: Heard | None
) -> SweepAction | None:
    """What the sweeper does to ``trip`` at ``now``; None while every clock has time left.

    ``heard`` is the location service's answer about the trip's driver, None when it could
    not be asked or had no position (then the silence rules do not apply this round).
    """
    if not trip.is_live:
        return None
    state = trip.state
    if now - trip.requested_at >= policy.max_life:
        reason = f"trip still {state} after {_s(policy.max_life)}, the longest a trip may live"
        if state is TripState.IN_PROGRESS:
            return EndRide(LivenessRule.TRIP_TOO_OLD, reason, last_heard(trip, heard))
        return Cancel(LivenessRule.TRIP_TOO_OLD, reason)
    if state in (TripState.REQUESTED, TripState.DISPATCHING):
        started = trip.dispatch_started_at or trip.requested_at
        if now - started < policy.dispatch_limit:
            return None
        reason = f"no driver found within {_s(policy.dispatch_limit)}; dispatch did not finish"
        if state is TripState.DISPATCHING:
            return Exhaust(LivenessRule.DISPATCH_STALLED, reason)
        return Cancel(LivenessRule.DISPATCH_STALLED, reason)
    last = last_heard(trip, heard)
    silent = now - last if last is not None else None
    if state in (TripState.ACCEPTED, TripState.ARRIVED):
        assert trip.driver_id is not None
        if silent is not None and silent >= policy.driver_silent:
            return Reassign(
                trip.driver_id,
                LivenessRule.DRIVER_SILENT,
                f"driver silent for {_s(silent)} (limit {_s(policy.driver_silent)})",
            )
        if (
            state is TripState.ACCEPTED
            and trip.accepted_at is not None
            and now - trip.accepted_at >= policy.pickup_limit
        ):
            return Reassign(
                trip.driver_id,
                LivenessRule.PICKUP_TOO_LONG,
                f"driver did not reach the pickup within {_s(policy.pickup_limit)}",
            )
        if (
            state is TripState.ARRIVED
            and trip.arrived_at is not None
            and now - trip.arrived_at >= policy.boarding_wait
        ):
            return Cancel(
                LivenessRule.BOARDING_TOO_LONG,
                f"ride did not start within {_s(policy.boarding_wait)} of the driver's arrival",
            )
        return None
    # IN_PROGRESS
    if silent is None or last is None:
        return None
    if silent >= policy.ride_silent_end:
        return EndRide(
            LivenessRule.RIDE_SILENT,
            f"driver silent for {_s(silent)} during the ride (limit "
            f"{_s(policy.ride_silent_end)}); ended at the quoted fare",
            last,
        )
    if silent >= policy.ride_silent_flag and (trip.flagged_at is None or trip.flagged_at < last):
        return Flag(
            LivenessRule.RIDE_SILENT,
            f"driver silent for {_s(silent)} during the ride",
            last,
        )
    return None


def _s(span: timedelta) -> str:
    return f"{round(span.total_seconds(), 1):g} s"
