"""Explain this dispatch: the record of one dispatch round, as ExplainDispatch shows it.

Pure: no I/O. A round is written with the trip in the transaction that commits its offer
(or its giving up); how its offer ended is not known then, so it is read from the trip's
history when the round is shown (:func:`outcome_of`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from trip.domain import Nearby, Transition
from trip.matcher import Candidate, CostModel, Match, Reason

__all__ = [
    "DispatchRound",
    "Policy",
    "RoundLog",
    "candidates_from_json",
    "offer_outcome",
    "outcome_of",
]


class Policy:
    """How a round chose its driver (the values are what ExplainDispatch shows)."""

    BATCH = "batch"
    NEAREST = "nearest"
    NEAREST_FALLBACK = "nearest_fallback"


# The history command that ends an offer -> the outcome shown for its round.
_ENDINGS = {
    "accept": "accepted",
    "decline": "declined",
    "expire_offer": "expired",
    "cancel": "trip_cancelled",
    "reassign": "driver_offline",
    "exhaust": "trip_ended",
}


@dataclass(frozen=True, slots=True)
class DispatchRound:
    """One round as stored: ``number`` and ``at`` are filled in when it is read back."""

    policy: str
    window_trips: int
    candidates: tuple[Candidate, ...]
    excluded: tuple[Candidate, ...]
    offers: tuple[tuple[str, str], ...] = ()
    """(driver id, offer id) of each offer the round made: one, or K with parallel offers."""
    gave_up: str = ""
    version: int = 0
    """The trip's version the round committed."""
    number: int = 0
    at: datetime | None = None

    def candidates_json(self) -> str:
        return json.dumps(
            {
                "candidates": [_candidate_doc(c) for c in self.candidates],
                "excluded": [_candidate_doc(c) for c in self.excluded],
                "offers": [{"driver_id": d, "offer_id": o} for d, o in self.offers],
            }
        )


def _candidate_doc(c: Candidate) -> dict[str, object]:
    return {
        "driver_id": c.driver_id,
        "distance_m": round(c.distance_m, 1),
        "pickup_s": round(c.pickup_s, 1),
        "cost": round(c.cost, 1),
        "reason": c.reason.value,
    }


def candidates_from_json(
    text: str,
) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...], tuple[tuple[str, str], ...]]:
    """(candidates, excluded, offers) of a stored round."""
    doc = json.loads(text)

    def parse(items: list[dict[str, object]]) -> tuple[Candidate, ...]:
        return tuple(
            Candidate(
                str(i["driver_id"]),
                float(str(i["distance_m"])),
                float(str(i["pickup_s"])),
                float(str(i["cost"])),
                Reason(str(i["reason"])),
            )
            for i in items
        )

    offers = tuple((str(o["driver_id"]), str(o["offer_id"])) for o in doc.get("offers", ()))
    return parse(doc["candidates"]), parse(doc["excluded"]), offers


def offer_outcome(
    round_: DispatchRound,
    driver_id: str,
    offer_id: str,
    history: Sequence[Transition],
    *,
    pending: frozenset[str],
) -> str:
    """How one offer of ``round_`` ended, from the trip's history after the round: the first
    ending the driver did themselves (accept, decline), else the first ending of the trip's
    offer at all (expiry, cancel, ...)."""
    if offer_id in pending:
        return "pending"
    after = [r for r in history if r.version > round_.version and r.command in _ENDINGS]
    own = [r for r in after if r.actor_id == driver_id and r.command in ("accept", "decline")]
    if own:
        return _ENDINGS[own[0].command]
    if any(r.command == "accept" for r in after):
        return "accepted_elsewhere"
    return _ENDINGS[after[0].command] if after else "ended"


def outcome_of(offer_outcomes: Sequence[str]) -> str:
    """How a round ended, from its offers' outcomes: no_drivers without an offer, accepted
    when one was, pending while one is, else how its first offer ended."""
    if not offer_outcomes:
        return "no_drivers"
    for outcome in ("accepted", "pending"):
        if outcome in offer_outcomes:
            return outcome
    return offer_outcomes[0]


@dataclass
class RoundLog:
    """What one dispatch step saw, gathered as it goes (``trip.dispatch``)."""

    model: CostModel
    region: str = ""
    policy: str = Policy.NEAREST
    window_trips: int = 1
    offer_order: list[Nearby] | None = None
    """The window's candidates in the order to offer them; None for nearest-first."""
    _seen: dict[str, Candidate] = field(default_factory=dict)
    _order: list[str] = field(default_factory=list)
    _excluded: dict[str, Candidate] = field(default_factory=dict)

    def ranked(self, match: Match) -> None:
        """The window's verdicts on the trip's drivers. The step offers the trip to its
        assigned driver, then to the others it may have by cost, never to one the window gave
        to another trip (that trip would lose the driver it was matched with)."""
        self.offer_order = [
            Nearby(c.driver_id, c.distance_m)
            for c in match.candidates
            if c.reason is not Reason.OFFERED_ELSEWHERE
        ]
        for c in match.candidates:
            self._add(c)
        for c in match.excluded:
            self._excluded.setdefault(c.driver_id, c)

    def searched(self, hits: Sequence[Nearby]) -> None:
        """A nearest-first search's hits, nearest first."""
        for hit in hits:
            pickup_s = self.model.pickup_s(hit.distance_m, self.region)
            reason = Reason.OUTSIDE_LIMIT if hit.distance_m > self.model.max_pickup_m else None
            candidate = Candidate(
                hit.driver_id, hit.distance_m, pickup_s, pickup_s, reason or Reason.COSTLIER
            )
            self._add(candidate)

    def left_out(self, driver_ids: Sequence[str] | frozenset[str], reason: Reason) -> None:
        """Drivers the search was told to leave out (their distance is unknown)."""
        for driver_id in sorted(driver_ids):
            if driver_id not in self._seen:
                self._excluded.setdefault(driver_id, Candidate(driver_id, -1.0, -1.0, -1.0, reason))

    def drop(self, driver_id: str) -> None:
        """Not to be offered the trip in this round any more (held by another trip)."""
        if self.offer_order is not None:
            self.offer_order = [c for c in self.offer_order if c.driver_id != driver_id]

    def busy(self, driver_id: str) -> None:
        """Found available, then held by another offer or trip first."""
        self._mark(driver_id, Reason.BUSY)

    def _add(self, candidate: Candidate) -> None:
        if candidate.driver_id not in self._seen:
            self._order.append(candidate.driver_id)
        self._seen[candidate.driver_id] = candidate

    def _mark(self, driver_id: str, reason: Reason) -> None:
        seen = self._seen.get(driver_id)
        if seen is not None:
            self._seen[driver_id] = Candidate(
                driver_id, seen.distance_m, seen.pickup_s, seen.cost, reason
            )

    def _split(self, picked: set[str]) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...]]:
        """(considered, excluded) as the round ends, the offered drivers first."""
        considered: list[Candidate] = []
        excluded = dict(self._excluded)
        for driver_id in self._order:
            c = self._seen[driver_id]
            if c.reason in (Reason.BUSY, Reason.OUTSIDE_LIMIT, Reason.OFFERED_ELSEWHERE) or (
                c.reason is Reason.ASSIGNED and driver_id not in picked
            ):
                # An assigned driver the step could not hold was taken by someone else.
                reason = Reason.BUSY if c.reason is Reason.ASSIGNED else c.reason
                excluded[driver_id] = Candidate(driver_id, c.distance_m, c.pickup_s, c.cost, reason)
                continue
            if driver_id in picked:
                c = Candidate(driver_id, c.distance_m, c.pickup_s, c.cost, Reason.ASSIGNED)
            considered.append(c)
        considered.sort(key=lambda c: c.driver_id not in picked)  # stable: the offered first
        return tuple(considered), tuple(excluded.values())

    def offered(self, driver_id: str, offer_id: str) -> DispatchRound:
        return self.offered_all([(driver_id, offer_id)])

    def offered_all(self, offers: Sequence[tuple[str, str]]) -> DispatchRound:
        """The round that made ``offers`` ((driver id, offer id), one or K in parallel)."""
        candidates, excluded = self._split({driver_id for driver_id, _ in offers})
        return DispatchRound(self.policy, self.window_trips, candidates, excluded, tuple(offers))

    def gave_up(self, reason: str) -> DispatchRound:
        candidates, excluded = self._split(set())
        return DispatchRound(self.policy, self.window_trips, candidates, excluded, gave_up=reason)
