"""Latest-wins conflation (rideshare/latest.py): one value per key, the newest, oldest key
first."""

from __future__ import annotations

import pytest

from rideshare.latest import Latest


def test_a_newer_value_replaces_the_waiting_one_and_is_counted() -> None:
    buf: Latest[str, str] = Latest(max_keys=10)
    for ts in range(1, 6):
        buf.put("d1", f"d1@{ts}", ts)
    assert len(buf) == 1
    assert buf.take() == ["d1@5"]
    assert buf.counts() == (4, 0)
    assert buf.counts() == (0, 0)  # read and reset


def test_keys_leave_in_the_order_they_first_arrived_whatever_their_updates() -> None:
    buf: Latest[str, str] = Latest(max_keys=10)
    buf.put("a", "a1", 1)
    buf.put("b", "b1", 1)
    buf.put("a", "a2", 2)  # keeps a's place: a busy driver does not push b back
    buf.put("c", "c1", 1)
    assert buf.take() == ["a2", "b1", "c1"]
    assert not buf


def test_an_older_value_never_replaces_a_newer_one_but_an_equal_rank_does() -> None:
    buf: Latest[str, str] = Latest(max_keys=10)
    assert buf.put("d", "new", 10)
    assert not buf.put("d", "late", 9)
    assert buf.take() == ["new"]
    assert buf.put("d", "first", 10)
    assert buf.put("d", "second", 10)
    assert buf.take() == ["second"]
    assert buf.counts() == (2, 0)


def test_take_with_a_limit_leaves_the_rest_in_order() -> None:
    buf: Latest[int, int] = Latest(max_keys=100)
    for key in range(7):
        buf.put(key, key * 10)
    assert buf.take(3) == [0, 10, 20]
    buf.put(0, 1)  # came back after leaving: now the newest key
    assert buf.take(10) == [30, 40, 50, 60, 1]
    assert buf.take(10) == []


def test_a_new_key_beyond_the_bound_drops_the_key_that_waited_longest() -> None:
    buf: Latest[str, str] = Latest(max_keys=2)
    buf.put("a", "a1")
    buf.put("b", "b1")
    buf.put("b", "b2")  # an update of a waiting key is no new key
    buf.put("c", "c1")
    assert buf.take() == ["b2", "c1"]
    assert buf.counts() == (1, 1)


def test_a_backlog_of_many_updates_is_one_value_per_key_the_newest() -> None:
    buf: Latest[str, tuple[str, int]] = Latest(max_keys=1_000)
    for ts in range(50):
        for driver in ("d1", "d2", "d3"):
            buf.put(driver, (driver, ts), ts)
    assert buf.take() == [("d1", 49), ("d2", 49), ("d3", 49)]
    assert buf.counts() == (147, 0)


def test_the_bound_must_hold_at_least_one_key() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        Latest(max_keys=0)
