"""Trips and stops (rule V9): segment a vehicle's positions into alternating trips and stops.

Pure: no I/O, no clock. The batch form :func:`segment` is the streaming form :class:`TripTracker` fed every fix,
so the engine's rule state, the reports and the tests all use one definition:

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
from dataclasses import dataclass, field, replace
from typing import Literal

SegmentKind = Literal["trip", "stop"]


def haversine_m(a: Sequence[float], b: Sequence[float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))


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


def _merge(a: Segment, b: Segment) -> Segment:
    return replace(a, end_ms=b.end_ms, end=b.end, distance_m=a.distance_m + b.distance_m)


@dataclass(slots=True)
class _Point:
    """A fix as the tracker keeps it: its index, time, position and the path length up to it."""

    idx: int
    ts_ms: int
    pos: tuple[float, float]
    cum_m: float


@dataclass(slots=True)
class TripTracker:
    """The incremental segmenter: ``feed`` fixes in time order, get closed segments back.

    A closed segment is returned once the next segment of the other kind is known (a stop when the trip after it
    has qualified and ended, a trip when the stop after it is confirmed), so every returned segment is final.
    ``finish`` closes what is open (end of the data). Per fix: two distance computations and a few comparisons.
    Out-of-order fixes (older than the last one) are ignored.
    """

    params: TripParams = field(default_factory=TripParams)
    _prev: _Point | None = None
    _anchor: _Point | None = None
    _confirmed: bool = False
    _run_kind: SegmentKind | None = None
    _run_start: _Point | None = None
    _held: Segment | None = None
    _count: int = 0

    @property
    def last_ts_ms(self) -> int | None:
        return self._prev.ts_ms if self._prev is not None else None

    @property
    def stationary(self) -> bool:
        """Is the vehicle in a confirmed stay?"""
        return self._confirmed

    def feed(self, fix: Fix) -> list[Segment]:
        out: list[Segment] = []
        prev = self._prev
        if prev is None:
            p = _Point(0, fix.ts_ms, fix.pos, 0.0)
            self._prev = self._anchor = self._run_start = p
            self._count = 1
            return out
        if fix.ts_ms < prev.ts_ms:
            return out
        p = _Point(self._count, fix.ts_ms, fix.pos, prev.cum_m + haversine_m(prev.pos, fix.pos))
        self._count += 1
        anchor = self._anchor
        assert anchor is not None
        params = self.params
        if (fix.ts_ms - prev.ts_ms) / 1000 > params.gap_stop_s:
            self._label("stop", prev, out)
            self._anchor, self._confirmed = p, False
        elif haversine_m(anchor.pos, fix.pos) <= params.stop_radius_m:
            if not self._confirmed and (fix.ts_ms - anchor.ts_ms) / 1000 >= params.min_stop_s:
                self._relabel_from_anchor(anchor, out)
                self._confirmed = True
            self._label("stop" if self._confirmed else "trip", prev, out)
        else:
            self._label("trip", prev, out)
            self._anchor, self._confirmed = p, False
        self._prev = p
        return out

    def finish(self) -> list[Segment]:
        """Close the open run and return everything still held (the tracker is then empty)."""
        out: list[Segment] = []
        prev = self._prev
        if prev is not None:
            assert self._run_start is not None
            self._close_run(self._run_kind or "stop", self._run_start, prev, out)
            if self._held is not None:
                out.append(self._held)
        self._prev = self._anchor = self._run_start = None
        self._held, self._run_kind, self._confirmed, self._count = None, None, False, 0
        return out

    def _label(self, kind: SegmentKind, prev: _Point, out: list[Segment]) -> None:
        """The interval from ``prev`` to the new fix is ``kind``."""
        if self._run_kind is None:
            self._run_kind = kind
        elif self._run_kind != kind:
            assert self._run_start is not None
            self._close_run(self._run_kind, self._run_start, prev, out)
            self._run_kind, self._run_start = kind, prev

    def _relabel_from_anchor(self, anchor: _Point, out: list[Segment]) -> None:
        """A stay is confirmed: the provisional movement since the anchor was a stop."""
        start = self._run_start
        assert start is not None
        if self._prev is None or anchor.idx == self._prev.idx:
            return  # nothing labelled since the anchor
        if start.idx < anchor.idx:
            assert self._run_kind is not None
            self._close_run(self._run_kind, start, anchor, out)
            self._run_start = anchor
        self._run_kind = "stop"

    def _close_run(self, kind: SegmentKind, start: _Point, end: _Point, out: list[Segment]) -> None:
        seg = Segment(kind, start.ts_ms, end.ts_ms, start.pos, end.pos, end.cum_m - start.cum_m)
        if kind == "trip" and not qualifies_as_trip(seg, self.params):
            seg = replace(seg, kind="stop")
        held = self._held
        if held is None:
            self._held = seg
        elif held.kind == seg.kind:
            self._held = _merge(held, seg)
        else:
            out.append(held)
            self._held = seg


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
