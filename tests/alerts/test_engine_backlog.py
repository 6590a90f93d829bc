"""Held-for timers and late data (pure): the deadline moves by how late the data arrived (``engine._lag``)."""

from __future__ import annotations

from tests.alerts.engine_helpers import Run, make_rule, reading, subject

HOUR = 3600


def _held() -> Run:
    return Run(make_rule("threshold", {"field": "door_open", "op": "==", "value": True, "for_s": 45}), subject())


def test_live_data_keeps_the_device_time_deadline() -> None:
    run = _held()
    run.feed(reading(0, run.subj, door_open=True), now_s=0)
    assert run.deadline() is not None and (run.deadline() - run.base).total_seconds() == 45  # type: ignore[operator]
    run.tick(45)
    assert run.firing() == [True]


def test_a_backlog_is_decided_by_its_own_readings_not_the_wall_clock() -> None:
    run = _held()
    run.feed(reading(0, run.subj, door_open=True), now_s=HOUR)  # an hour late: a gateway flushing its buffer
    run.tick(HOUR + 1)  # a timer tick between two batches of the backlog
    assert run.firing() == []
    run.feed(reading(5, run.subj, door_open=False), now_s=HOUR + 1.5)  # closed after 5 s (device time)
    run.tick(HOUR + 100)
    assert run.firing() == []


def test_a_backlog_that_ends_with_the_door_open_fires_when_its_time_is_up() -> None:
    run = _held()
    run.feed(reading(0, run.subj, door_open=True), now_s=HOUR)
    run.feed(reading(30, run.subj, door_open=True), now_s=HOUR + 1)  # still open 30 s in, then nothing
    run.tick(HOUR + 10)
    assert run.firing() == []
    run.tick(HOUR + 1 + 15)  # 45 s of device time: 15 s after the last reading arrived
    assert run.firing() == [True]


def test_a_backlog_reading_that_shows_the_whole_window_fires_at_once() -> None:
    run = _held()
    run.feed(reading(0, run.subj, door_open=True), now_s=HOUR)
    run.feed(reading(50, run.subj, door_open=True), now_s=HOUR + 1)
    assert run.firing() == [True]


def test_a_geofence_backlog_is_decided_by_its_own_readings() -> None:
    square = [[23.0, 113.0], [23.2, 113.0], [23.2, 113.4], [23.0, 113.4]]
    run = Run(
        make_rule("geofence", {"polygons": [square], "min_outside_s": 60}, "vehicle"), subject(device_type="vehicle")
    )
    run.feed(reading(0, run.subj, lat=23.3, lon=113.2), now_s=HOUR)  # outside, an hour late
    run.tick(HOUR + 1)
    run.feed(reading(30, run.subj, lat=23.1, lon=113.2), now_s=HOUR + 1.5)  # back inside after 30 s
    run.tick(HOUR + 100)
    assert run.firing() == []
