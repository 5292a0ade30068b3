"""Latest-wins conflation: a buffer that holds the newest value per key. Pure: no I/O.

A driver's position supersedes the one before it, so wherever positions wait (the edge's
batch to the location service, the location service's write to Redis, a rider's socket),
a FIFO only delays the one that matters behind stale ones: under overload its age grows with
the backlog. :class:`Latest` keeps one value per key instead, so a backlog is at most one
value per driver and what leaves is always the newest there is; under overload the rate of
what leaves drops, its age does not.

A key that is waiting keeps its place when its value is replaced (dict order is insertion
order), so a driver who reports often cannot push out one who reports rarely. ``rank`` (a
fix's own time) decides between two values: a lower rank never replaces a higher one, so a
fix that arrives late does not undo a newer one; equal ranks go to the later arrival.

Counts are plain integers, read and reset by the owner (:meth:`counts`), so that the hot
path costs a dict operation and no metrics call per value.
"""

from __future__ import annotations

from itertools import islice
from typing import Generic, TypeVar

__all__ = ["Latest"]

K = TypeVar("K")
V = TypeVar("V")


class Latest(Generic[K, V]):
    """The newest value per key, oldest key first, at most ``max_keys`` keys.

    When full, a new key evicts the key that has waited longest (counted as dropped)."""

    __slots__ = ("_dropped", "_items", "_max_keys", "_superseded")

    def __init__(self, *, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._max_keys = max_keys
        self._items: dict[K, tuple[int, V]] = {}
        self._superseded = 0
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, key: K, value: V, rank: int = 0) -> bool:
        """Hold ``value`` for ``key`` unless a higher-ranked one waits; True when it is held.

        Either way one of the two is superseded and counted."""
        items = self._items
        waiting = items.get(key)
        if waiting is not None:
            self._superseded += 1
            if waiting[0] > rank:
                return False
            items[key] = (rank, value)
            return True
        if len(items) >= self._max_keys:
            del items[next(iter(items))]
            self._dropped += 1
        items[key] = (rank, value)
        return True

    def take(self, limit: int | None = None) -> list[V]:
        """Remove and return up to ``limit`` values (all without one), oldest key first."""
        items = self._items
        if limit is None or len(items) <= limit:
            self._items = {}
            return [value for _, value in items.values()]
        keys = list(islice(items, limit))
        return [items.pop(key)[1] for key in keys]

    def counts(self) -> tuple[int, int]:
        """(superseded, dropped) since the last call, and reset them."""
        counts = self._superseded, self._dropped
        self._superseded = self._dropped = 0
        return counts
