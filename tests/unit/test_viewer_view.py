"""The viewer feed's per-socket view (edge/viewer_feed.py): latest-wins per driver, drivers
appearing, moving and leaving the box, staleness."""

from __future__ import annotations

from edge import wire
from edge.viewer_feed import STALE_MS, ViewerView
from protos.location.v1 import location_pb2

BOX = wire.Bbox(52.0, 13.0, 53.0, 14.0)


def at(driver_id: str, lat: float, ts: int, lng: float = 13.5) -> location_pb2.DriverPosition:
    return location_pb2.DriverPosition(driver_id=driver_id, lat=lat, lng=lng, server_ts_ms=ts)


def test_ten_positions_of_a_driver_between_frames_are_sent_once_the_newest() -> None:
    view = ViewerView(BOX, max_drivers=10)
    for i in range(10):
        view.offer(at("d1", 52.1 + i * 0.01, ts=1000 + i), now_ms=1000 + i)
    appeared, moved, left = view.take()
    assert [(p.driver_id, p.server_ts_ms) for p in appeared] == [("d1", 1009)]
    assert moved == [] and left == []
    view.offer(at("d1", 52.5, ts=2000), now_ms=2000)
    view.offer(at("d1", 52.4, ts=1500), now_ms=2000)  # arrived late: superseded
    appeared, moved, left = view.take()
    assert appeared == [] and [p.lat for p in moved] == [52.5]


def test_a_shown_driver_outside_the_box_leaves_and_one_never_shown_is_ignored() -> None:
    view = ViewerView(BOX, max_drivers=10)
    view.reset([at("d1", 52.5, ts=1000)], now_ms=1000)
    view.offer(at("d1", 60.0, ts=1100), now_ms=1100)
    view.offer(at("d2", 60.0, ts=1100), now_ms=1100)
    assert view.take() == ([], [], ["d1"])
    assert view.shown == {}


def test_a_silent_driver_leaves_after_the_staleness_limit() -> None:
    view = ViewerView(BOX, max_drivers=10)
    view.reset([at("d1", 52.5, ts=1000), at("d2", 52.6, ts=1000)], now_ms=1000)
    view.offer(at("d2", 52.7, ts=1000 + STALE_MS), now_ms=1000 + STALE_MS)
    view.expire(now_ms=1000 + STALE_MS)
    _, moved, left = view.take()
    assert left == ["d1"] and [p.driver_id for p in moved] == ["d2"]


def test_live_positions_older_than_the_snapshot_are_not_sent() -> None:
    view = ViewerView(BOX, max_drivers=10)
    view.offer(at("d1", 52.1, ts=900), now_ms=900)  # while the snapshot was read
    view.offer(at("d2", 52.2, ts=1200), now_ms=1200)
    view.reset([at("d1", 52.3, ts=1000), at("d2", 52.1, ts=1000)], now_ms=1000)
    appeared, moved, left = view.take()
    assert appeared == [] and [p.driver_id for p in moved] == ["d2"] and left == []


def test_a_new_box_drops_what_was_gathered_for_the_old_one() -> None:
    view = ViewerView(BOX, max_drivers=10)
    view.offer(at("d1", 52.1, ts=900), now_ms=900)
    view.move(wire.Bbox(0.0, 0.0, 1.0, 1.0))
    assert view.take() == ([], [], [])


def test_no_more_drivers_appear_than_the_cap() -> None:
    view = ViewerView(BOX, max_drivers=2)
    for i in range(5):
        view.offer(at(f"d{i}", 52.1, ts=1000), now_ms=1000)
    appeared, _, _ = view.take()
    assert len(appeared) == 2 and len(view.shown) == 2
