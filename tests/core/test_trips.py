"""core/trips.py: V9 segmentation, batch and streaming."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from core.trips import (
    Fix,
    Segment,
    TrackState,
    TripParams,
    TripTracker,
    engine_seconds,
    haversine_m,
    segment,
    track_feed,
    track_finish,
)

BASE = 1_800_000_000_000
HOME = (23.1291, 113.2644)
M_PER_DEG_LAT = 111_195.0


def north(pos: tuple[float, float], metres: float) -> tuple[float, float]:
    return (pos[0] + metres / M_PER_DEG_LAT, pos[1])


def path_m(fixes: list[Fix]) -> float:
    return sum(haversine_m(a.pos, b.pos) for a, b in itertools.pairwise(fixes))


@st.composite
def tracks(draw: st.DrawFn) -> list[Fix]:
    """Random walks mixing parking, driving and terminal gaps."""
    n = draw(st.integers(min_value=1, max_value=120))
    ts, lat, lon = BASE, HOME[0], HOME[1]
    out = [Fix(ts, lat, lon)]
    for _ in range(n - 1):
        ts += draw(st.sampled_from([0, 5_000, 30_000, 60_000, 120_000, 3_700_000]))
        step = draw(st.sampled_from([0.0, 0.0, 5.0, 40.0, 300.0, 1500.0]))
        bearing = draw(st.floats(min_value=0, max_value=2 * math.pi))
        lat += step * math.cos(bearing) / M_PER_DEG_LAT
        lon += step * math.sin(bearing) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
        out.append(Fix(ts, lat, lon))
    return out


def check_structure(fixes: list[Fix], segs: list[Segment], params: TripParams) -> None:
    assert segs, "fixes give at least one segment"
    assert segs[0].start_ms == fixes[0].ts_ms
    assert segs[-1].end_ms == fixes[-1].ts_ms
    for a, b in itertools.pairwise(segs):
        assert a.end_ms == b.start_ms and a.end == b.start, "contiguous, non-overlapping"
        assert a.kind != b.kind, "trips and stops alternate"
    for s in segs:
        assert s.start_ms <= s.end_ms
        assert s.distance_m >= 0
        if s.kind == "trip":
            assert s.distance_m >= params.min_trip_m and s.duration_s >= params.min_trip_s
    assert math.isclose(sum(s.distance_m for s in segs), path_m(fixes), rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=300, deadline=None)
@given(tracks())
def test_segment_structure_on_random_tracks(fixes: list[Fix]) -> None:
    params = TripParams()
    segs = segment(fixes, params)
    check_structure(fixes, segs, params)
    # every gap longer than gap_stop_s lies inside a stop
    for a, b in itertools.pairwise(fixes):
        if (b.ts_ms - a.ts_ms) / 1000 > params.gap_stop_s:
            (owner,) = [s for s in segs if s.start_ms <= a.ts_ms and b.ts_ms <= s.end_ms]
            assert owner.kind == "stop"


@settings(max_examples=100, deadline=None)
@given(tracks(), st.integers(min_value=1, max_value=7))
def test_streaming_equals_batch_in_any_chunking(fixes: list[Fix], every: int) -> None:
    tracker = TripTracker()
    got: list[Segment] = []
    for i, f in enumerate(fixes):
        got.extend(tracker.feed(f))
        if i % every == 0:
            # every segment the tracker hands out is final: it is a prefix of the batch answer
            assert got == segment(fixes)[: len(got)]
    got.extend(tracker.finish())
    assert got == segment(fixes)


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=1_000, max_value=60_000))
def test_single_parked_car_is_one_stop(n: int, step_ms: int) -> None:
    fixes = [Fix(BASE + i * step_ms, *HOME) for i in range(n)]
    segs = segment(fixes)
    assert [s.kind for s in segs] == ["stop"]
    assert segs[0].distance_m == 0 and segs[0].duration_s == (n - 1) * step_ms / 1000


def test_gps_jitter_while_parked_is_one_stop() -> None:
    fixes = [Fix(BASE + i * 30_000, *north(HOME, 15 * ((-1) ** i))) for i in range(200)]
    segs = segment(fixes)
    assert [s.kind for s in segs] == ["stop"]
    assert segs[0].distance_m > 0  # the jitter is counted, not hidden


def drive(start_ms: int, start: tuple[float, float], metres: float, seconds: int, step_s: int = 10) -> list[Fix]:
    n = seconds // step_s
    return [Fix(start_ms + i * step_s * 1000, *north(start, metres * i / n)) for i in range(1, n + 1)]


def park(start_ms: int, at: tuple[float, float], seconds: int, step_s: int = 30) -> list[Fix]:
    return [Fix(start_ms + i * step_s * 1000, *at) for i in range(1, seconds // step_s + 1)]


def test_park_drive_park_is_stop_trip_stop_with_hand_computed_figures() -> None:
    fixes = [Fix(BASE, *HOME), *park(BASE, HOME, 1200)]
    t = fixes[-1].ts_ms
    fixes += drive(t, HOME, 6000, 900, step_s=20)  # 6 km in 15 min, 133 m a fix: out of the 100 m radius at once
    dest = fixes[-1].pos
    fixes += park(fixes[-1].ts_ms, dest, 1800)
    segs = segment(fixes)
    assert [s.kind for s in segs] == ["stop", "trip", "stop"]
    stop1, trip, stop2 = segs
    assert stop1.duration_s == 1200
    assert trip.start_ms == BASE + 1200_000 and trip.end_ms == BASE + 2100_000
    assert trip.duration_s == 900
    assert abs(trip.distance_m - 6000) < 1
    assert stop2.duration_s == 1800 and stop2.distance_m == 0


def test_short_move_in_car_park_is_not_a_trip() -> None:
    fixes = [Fix(BASE, *HOME), *park(BASE, HOME, 900)]
    fixes += drive(fixes[-1].ts_ms, HOME, 400, 400)  # 400 m: below 500 m
    fixes += park(fixes[-1].ts_ms, fixes[-1].pos, 900)
    assert [s.kind for s in segment(fixes)] == ["stop"]


def test_fast_short_hop_is_not_a_trip() -> None:
    fixes = [Fix(BASE, *HOME), *park(BASE, HOME, 900)]
    fixes += drive(fixes[-1].ts_ms, HOME, 2000, 200)  # 2 km in 200 s: below 300 s
    fixes += park(fixes[-1].ts_ms, fixes[-1].pos, 900)
    assert [s.kind for s in segment(fixes)] == ["stop"]


def test_traffic_light_wait_stays_inside_the_trip() -> None:
    fixes = [Fix(BASE, *HOME), *park(BASE, HOME, 900)]
    fixes += drive(fixes[-1].ts_ms, HOME, 3000, 300)
    light = fixes[-1].pos
    fixes += park(fixes[-1].ts_ms, light, 120, step_s=10)  # 2 min at a red light: < 300 s
    fixes += drive(fixes[-1].ts_ms, light, 3000, 300)
    fixes += park(fixes[-1].ts_ms, fixes[-1].pos, 900)
    assert [s.kind for s in segment(fixes)] == ["stop", "trip", "stop"]


def test_gap_splits_a_drive_into_two_trips() -> None:
    fixes = [Fix(BASE, *HOME), *drive(BASE, HOME, 5000, 600)]
    far = fixes[-1].pos
    resume = fixes[-1].ts_ms + 2 * 3600_000
    fixes.append(Fix(resume, *far))
    fixes += drive(resume, far, 5000, 600)
    segs = segment(fixes)
    assert [s.kind for s in segs] == ["trip", "stop", "trip"]
    assert segs[1].duration_s == 7200


def test_no_fixes_no_segments_and_one_fix_one_stop() -> None:
    assert segment([]) == []
    assert segment([Fix(BASE, *HOME)]) == [Segment("stop", BASE, BASE, HOME, HOME, 0.0)]


def test_tracker_ignores_out_of_order_fixes() -> None:
    tr = TripTracker()
    tr.feed(Fix(BASE + 60_000, *HOME))
    assert tr.feed(Fix(BASE, *north(HOME, 5000))) == []
    assert tr.last_ts_ms == BASE + 60_000


def test_engine_seconds_counts_ignition_on_intervals_but_not_gaps() -> None:
    fixes = [
        Fix(BASE, *HOME, ignition=True),
        Fix(BASE + 600_000, *HOME, ignition=True),  # 600 s on
        Fix(BASE + 900_000, *HOME, ignition=False),  # 300 s on
        Fix(BASE + 1_200_000, *HOME, ignition=True),  # off
        Fix(BASE + 1_200_000 + 7_200_000, *HOME, ignition=True),  # gap: not counted
    ]
    assert engine_seconds(fixes) == 900


@settings(max_examples=50, deadline=None)
@given(tracks(), st.integers(min_value=0, max_value=119))
def test_track_state_survives_a_json_round_trip_mid_stream(fixes: list[Fix], cut: int) -> None:
    """The engine snapshots the state as JSON and restores it after a restart: the result must not change."""
    params = TripParams()
    st1 = TrackState()
    got: list[Segment] = []
    for f in fixes[:cut]:
        got.extend(track_feed(st1, f.ts_ms, f.lat, f.lon, params))
    st2 = TrackState(**json.loads(json.dumps(asdict(st1))))
    for f in fixes[cut:]:
        got.extend(track_feed(st2, f.ts_ms, f.lat, f.lon, params))
    got.extend(track_finish(st2, params))
    assert got == segment(fixes, params)
