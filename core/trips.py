"""Trips and stops (rule V9): segment a vehicle's positions into alternating trips and stops.

Pure: no I/O, no clock. The batch form :func:`segment` is the streaming form (:func:`track_feed` on a JSON-native
:class:`TrackState`, or :class:`TripTracker`) fed every fix, so the engine's rule state (V8), the reports and the
tests all use one definition:

- a *stay* starts at an anchor fix and lasts while later fixes are within ``stop_radius_m`` of it; once it has
  lasted ``min_stop_s`` it is confirmed and everything from the anchor on is a stop, until a fix leaves the radius
  (the first fix outside the radius becomes the next anchor);
- an interval between two fixes longer than ``gap_stop_s`` is a stop (the terminal was off or out of coverage);
- everything else is movement; a movement run shorter than ``min_trip_m`` or ``min_trip_s`` is not a trip: it is
  folded into the stops around it (a car moved within its car park), so two trips are always separated by a stop;
- segments are contiguous: each starts where the previous one ended (at a fix's timestamp), together they cover
  the fixes' span exactly, and their distances (the path length between consecutive fixes) add up to the path's.

Speed and ignition are not used to segment (they are too often missing or noisy on cheap terminals); engine time
comes from :func:`engine_seconds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SegmentKind = Literal["trip", "stop"]


def haversine_m(a: Sequence[float], b: Sequence[float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))


def point_in_polygon(lat: float, lon: float, poly: Sequence[Sequence[float]]) -> bool:
    """Ray casting on (lat, lon) treated as planar: fine at city / province scale."""
    inside = False
    n = len(poly)
    j = n - 1
    for i in range(n):
        yi, xi = poly[i][0], poly[i][1]
        yj, xj = poly[j][0], poly[j][1]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


@dataclass(frozen=True, slots=True)
class Fix:
    ts_ms: int
    lat: float
    lon: float
    speed_kmh: float | None = None
    ignition: bool | None = None

    @property
    def pos(self) -> tuple[float, float]:
        return (self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    start_ms: int
    end_ms: int
    start: tuple[float, float]
    end: tuple[float, float]
    distance_m: float

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


@dataclass(frozen=True, slots=True)
class TripParams:
    """DOMAIN-RULES V9: a trip is >= 500 m and >= 300 s; a stop >= 300 s; a gap > 1 h is a stop."""

    min_trip_m: float = 500
    min_trip_s: float = 300
    min_stop_s: float = 300
    gap_stop_s: float = 3600
    stop_radius_m: float = 100


def qualifies_as_trip(seg: Segment, params: TripParams) -> bool:
    return seg.distance_m >= params.min_trip_m and seg.duration_s >= params.min_trip_s


Point = list[Any]  # a fix as the tracker keeps it: [index, ts_ms, lat, lon, path length up to it in m]


@dataclass(slots=True)
class TrackState:
    """The streaming segmenter's state: JSON-native fields only, so a rule state can extend it and be snapshotted
    as it is (alerts/engine.py). Use it through :func:`track_feed` / :func:`track_finish` or :class:`TripTracker`.
    """

    prev: Point | None = None  # the last fix
    anchor: Point | None = None  # the first fix of the current stay candidate
    confirmed: bool = False  # the candidate has lasted min_stop_s: a stop
    run_kind: str | None = None  # the kind of the open run of intervals
    run_start: Point | None = None
    held: list[Any] | None = None  # the stop not yet handed out: [start_ms, end_ms, lat0, lon0, lat1, lon1, m]
    count: int = 0


def track_feed(st: TrackState, ts_ms: int, lat: float, lon: float, params: TripParams) -> list[Segment]:
    """Feed one fix; returns the segments it closed (usually none). An older fix than the last is ignored.

    A trip is handed out when it has ended (the stay after it is confirmed, or a gap began); a stop when the
    next trip has ended (only then is it known that no short movement extends it). Every segment handed out is
    final: ``segment`` of the same fixes starts with them. Cost: two distances and a few comparisons."""
    out: list[Segment] = []
    prev = st.prev
    if prev is None:
        st.prev = st.anchor = st.run_start = [0, ts_ms, lat, lon, 0.0]
        st.count = 1
        return out
    if ts_ms < prev[1]:
        return out
    p: Point = [st.count, ts_ms, lat, lon, prev[4] + haversine_m((prev[2], prev[3]), (lat, lon))]
    st.count += 1
    anchor = st.anchor
    assert anchor is not None
    if ts_ms - prev[1] > params.gap_stop_s * 1000:
        _label(st, "stop", prev, params, out)
        st.anchor, st.confirmed = p, False
    elif haversine_m((anchor[2], anchor[3]), (lat, lon)) <= params.stop_radius_m:
        if not st.confirmed and ts_ms - anchor[1] >= params.min_stop_s * 1000:
            if anchor[0] != prev[0]:  # intervals since the anchor were provisional movement: they were a stop
                start = st.run_start
                assert start is not None and st.run_kind is not None
                if start[0] < anchor[0]:
                    _close_run(st, st.run_kind, start, anchor, params, out)
                    st.run_start = anchor
                st.run_kind = "stop"
            st.confirmed = True
        _label(st, "stop" if st.confirmed else "trip", prev, params, out)
    else:
        _label(st, "trip", prev, params, out)
        st.anchor, st.confirmed = p, False
    st.prev = p
    return out


def track_finish(st: TrackState, params: TripParams) -> list[Segment]:
    """Close the open run (the end of the data) and hand out everything held; the state is then empty."""
    out: list[Segment] = []
    prev = st.prev
    if prev is not None:
        assert st.run_start is not None
        _close_run(st, st.run_kind or "stop", st.run_start, prev, params, out)
        if st.held is not None:
            out.append(_stop(st.held))
    st.prev = st.anchor = st.run_start = st.held = None
    st.run_kind, st.confirmed, st.count = None, False, 0
    return out


def _label(st: TrackState, kind: str, prev: Point, params: TripParams, out: list[Segment]) -> None:
    """The interval from ``prev`` to the new fix is ``kind``."""
    if st.run_kind is None:
        st.run_kind = kind
    elif st.run_kind != kind:
        assert st.run_start is not None
        _close_run(st, st.run_kind, st.run_start, prev, params, out)
        st.run_kind, st.run_start = kind, prev


def _stop(h: list[Any]) -> Segment:
    return Segment("stop", h[0], h[1], (h[2], h[3]), (h[4], h[5]), h[6])


def _close_run(st: TrackState, kind: str, start: Point, end: Point, params: TripParams, out: list[Segment]) -> None:
    dist = end[4] - start[4]
    if kind == "trip" and dist >= params.min_trip_m and end[1] - start[1] >= params.min_trip_s * 1000:
        if st.held is not None:
            out.append(_stop(st.held))
            st.held = None
        out.append(Segment("trip", start[1], end[1], (start[2], start[3]), (end[2], end[3]), dist))
        return
    held = st.held  # a stop, or a movement too short to be a trip: folded into the stop around it
    if held is None:
        st.held = [start[1], end[1], start[2], start[3], end[2], end[3], dist]
    else:
        held[1], held[4], held[5], held[6] = end[1], end[2], end[3], held[6] + dist


@dataclass(slots=True)
class TripTracker:
    """The incremental segmenter as an object: ``feed`` fixes in time order, get closed segments back
    (:func:`track_feed`); ``finish`` at the end of the data."""

    params: TripParams = field(default_factory=TripParams)
    state: TrackState = field(default_factory=TrackState)

    @property
    def last_ts_ms(self) -> int | None:
        return int(self.state.prev[1]) if self.state.prev is not None else None

    @property
    def stationary(self) -> bool:
        """Is the vehicle in a confirmed stay?"""
        return self.state.confirmed

    def feed(self, fix: Fix) -> list[Segment]:
        return track_feed(self.state, fix.ts_ms, fix.lat, fix.lon, self.params)

    def finish(self) -> list[Segment]:
        return track_finish(self.state, self.params)


def segment(fixes: Sequence[Fix], params: TripParams = TripParams()) -> list[Segment]:
    """Trips and stops of time-ordered ``fixes`` (see the module doc). No fixes: no segments."""
    tracker = TripTracker(params)
    out: list[Segment] = []
    for fix in fixes:
        out.extend(tracker.feed(fix))
    out.extend(tracker.finish())
    return out


def engine_seconds(fixes: Iterable[Fix], gap_stop_s: float = 3600) -> float:
    """Seconds with the ignition on: each interval whose first fix reports ignition on, gaps excluded."""
    total = 0.0
    prev: Fix | None = None
    for fix in fixes:
        if prev is not None and prev.ignition:
            dt = (fix.ts_ms - prev.ts_ms) / 1000
            if 0 <= dt <= gap_stop_s:
                total += dt
        prev = fix
    return total
