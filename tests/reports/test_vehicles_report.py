"""The vehicles report's figures on a seeded week with hand-computed expectations.

Period: Mon 2026-02-09 00:00 to Tue 2026-02-17 00:00 Beijing time (8 days). Sat 02-14 is a make-up working day
(调休), Sun 02-15 a plain rest day, Mon 02-16 a public holiday (Chinese New Year's Eve). Working days: 09-14, six
of them; working hours 08:30-17:30, so 54 h of working time per vehicle and a target of 6 x 3 h = 18 h.

City c1: agency A (a1, a2, a3), agency B (b1, b2). City c2: agency D (d1, d2).
- a1: Mon-Sat 09:00-12:00, 30 km each: 6 trips, 180 km, 18 h all in working time (the Saturday too): 100 %.
- a2: Tue 14:00-16:00, 20 km: 2 h, 11.1 % of target (under-used). a3: nothing.
- b1: Mon 08:00-12:00 40 km (08:00-08:30 after hours: 0.5 h, 5 km), Sun 10:00-11:00 10 km (rest day),
  Mon 02-16 10:00-12:00 20 km (holiday): 7 h, 3.5 h in working time (19.4 %), 3 trips off hours.
- b2: Mon 10:00-11:00 10 km, Mon-Fri 13:00-17:00 40 km each, Wed 18:00-19:00 10 km (after hours): 7 trips,
  220 km, 22 h, 21 h in working time (116.7 %: not over 120 %).
- d1: Thu 09:00-10:00 10 km (5.6 %); d2: nothing.
Peaks: A 1 (a1 and a2 never overlap), B 2 of 2 (Mon 10:00-11:00: short, 1 h saturated), c1 3 (Mon 10:00-11:00),
c2 1. Needed = peak + max(1, ceil(20 % of peak)): A 2 (1 spare), c1 4 of 5 (retire 1), c2 2 of 2.
"""

from __future__ import annotations

import math
from datetime import datetime
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.calendar import BEIJING, Calendar, WorkingHours
from core.errors import UserError
from core.trips import Segment
from reports.vehicle_stats import (
    Policy,
    Vehicle,
    available_working_s,
    clip,
    concurrency,
    hour_of_week_hours,
    is_short,
    needed,
    split_time,
    time_at_or_above,
)
from reports.vehicles import Figures, compute, findings, heatmaps, policy_from

CAL = Calendar()
POLICY = Policy()
START = datetime(2026, 2, 9, tzinfo=BEIJING)
END = datetime(2026, 2, 17, tzinfo=BEIJING)
START_MS, END_MS = int(START.timestamp() * 1000), int(END.timestamp() * 1000)


def at(day: int, hh: int, mm: int = 0) -> int:
    return int(datetime(2026, 2, day, hh, mm, tzinfo=BEIJING).timestamp() * 1000)


def trip(day: int, h1: int, h2: int, km: float, m1: int = 0, m2: int = 0) -> Segment:
    return Segment("trip", at(day, h1, m1), at(day, h2, m2), (32.0, 118.8), (32.1, 118.9), km * 1000)


def vehicle(vid: str, agency: str, city: str) -> Vehicle:
    return Vehicle(vid, vid, agency, f"agency {agency}", city, f"city {city}", ("p", city, agency))


VEHICLES = [
    vehicle("a1", "A", "c1"),
    vehicle("a2", "A", "c1"),
    vehicle("a3", "A", "c1"),
    vehicle("b1", "B", "c1"),
    vehicle("b2", "B", "c1"),
    vehicle("d1", "D", "c2"),
    vehicle("d2", "D", "c2"),
]
TRIPS = {
    "a1": [trip(d, 9, 12, 30) for d in range(9, 15)],
    "a2": [trip(10, 14, 16, 20)],
    "b1": [trip(9, 8, 12, 40), trip(15, 10, 11, 10), trip(16, 10, 12, 20)],
    "b2": [trip(9, 10, 11, 10), *(trip(d, 13, 17, 40) for d in range(9, 14)), trip(11, 18, 19, 10)],
    "d1": [trip(12, 9, 10, 10)],
}


def figures() -> Figures:
    return compute(VEHICLES, TRIPS, START_MS, END_MS, CAL, POLICY)


def test_working_time_counts_the_make_up_saturday_and_not_the_holiday() -> None:
    assert available_working_s(START_MS, END_MS, CAL, WorkingHours()) == (54 * 3600, 6)


def test_per_vehicle_figures() -> None:
    u = {x.vehicle.id: x for x in figures().usages}
    a1, a2, a3, b1, b2 = u["a1"], u["a2"], u["a3"], u["b1"], u["b2"]
    assert (a1.trips, a1.km, a1.engine_s, a1.working_s) == (6, 180, 18 * 3600, 18 * 3600)
    assert a1.off_hours_trips == 0 and a1.after_hours_s == a1.non_working_s == 0
    assert round(100 * a1.use_share, 1) == 33.3 and a1.target_ratio == 1.0
    assert (a2.trips, a2.km, round(100 * a2.target_ratio, 1)) == (1, 20, 11.1)
    assert (a3.trips, a3.km, a3.engine_s, a3.target_ratio) == (0, 0, 0, 0)
    assert (b1.trips, b1.km, b1.engine_s, b1.working_s) == (3, 70, 7 * 3600, 3.5 * 3600)
    assert (b1.after_hours_s, b1.after_hours_km) == (1800, 5)
    assert (b1.non_working_s, b1.non_working_km, b1.holiday_s, b1.holiday_km) == (3 * 3600, 30, 2 * 3600, 20)
    assert b1.off_hours_trips == 3
    assert (b2.trips, b2.km, b2.engine_s, b2.working_s) == (7, 220, 22 * 3600, 21 * 3600)
    assert (b2.after_hours_s, b2.after_hours_km, b2.off_hours_trips) == (3600, 10, 1)
    assert round(100 * b2.target_ratio, 1) == 116.7


def test_peaks_saturation_and_needed() -> None:
    fig = figures()
    a, b, d = fig.agencies
    c1, c2 = fig.cities
    assert [(g.id, g.fleet, g.peak) for g in fig.agencies] == [("A", 3, 1), ("B", 2, 2), ("D", 2, 1)]
    assert b.saturated_s == 3600 and b.peak_at_ms == at(9, 10)
    assert a.saturated_s == 0
    assert [is_short(g, POLICY) for g in (a, b, d)] == [False, True, False]
    assert (c1.fleet, c1.peak, c1.peak_at_ms, needed(c1.peak, POLICY)) == (5, 3, at(9, 10), 4)
    assert (c2.fleet, c2.peak, needed(c2.peak, POLICY)) == (2, 1, 2)


def test_heatmap_cells_are_the_share_of_the_fleet_in_use() -> None:
    b = figures().agencies[1]
    assert len(b.heatmap) == 7 and all(len(row) == 24 for row in b.heatmap)
    # Monday 10 h: two Mondays in the period; b1 + b2 on 02-09 and b1 on 02-16 = 3 vehicle-hours of 2 x 2.
    assert b.heatmap[0][10] == 75.0
    assert b.heatmap[0][8] == 25.0  # b1 08:00-09:00 on 02-09 (an 08:00-08:30 after-hours part included)
    assert b.heatmap[6][10] == 50.0  # Sunday 10 h: b1 alone, one Sunday
    assert b.heatmap[2][18] == 50.0  # Wednesday 18 h: b2
    assert b.heatmap[1][13] == 50.0  # Tuesday 13 h: b2
    assert b.heatmap[5][13] == 0.0  # Saturday: b2 does not work Saturdays
    # Mon 8/9/10/11 h: 25 + 25 + 75 + 50; Mon 13-16 h: 4 x 25; Tue-Fri 13-16 h: 16 x 50; Wed 18 h and Sun 10 h: 50 each
    assert sum(map(sum, b.heatmap)) == 25 + 25 + 75 + 50 + 4 * 25 + 16 * 50 + 50 + 50
    chart = heatmaps(figures())[1]
    assert chart.kind == "heatmap" and chart.x[0] == "00" and len(chart.series) == 7
    assert next(iter(chart.series)) == "周一 Mon" and chart.series["周一 Mon"][10] == 75.0


def test_allocation_advice_with_its_numbers() -> None:
    advice = findings(figures(), POLICY)
    under = [f.numbers["vehicle"] for f in advice if f.key == "under_used"]
    assert next(f for f in advice if f.key == "under_used").text_zh.startswith("agency A的a3使用不足")
    assert under == ["a3", "d2", "d1", "a2", "b1"]
    assert not [f for f in advice if f.key == "over_used"]
    (short,) = [f for f in advice if f.key == "short"]
    assert short.numbers == {"agency": "B", "peak": 2, "fleet": 2, "saturated_h": 1.0}
    (move,) = [f for f in advice if f.key == "move"]
    assert move.numbers["vehicle"] == "a3" and move.numbers["from_agency"] == "A" and move.numbers["to_agency"] == "B"
    assert move.numbers["from_target_ratio_pct"] == 37.0  # (18 + 2 + 0) h of 3 x 18 h
    (retire,) = [f for f in advice if f.key == "retire"]
    assert retire.numbers == {"city": "c1", "fleet": 5, "peak": 3, "margin": 1, "needed": 4, "retire": 1}
    (off,) = [f for f in advice if f.key == "off_hours"]
    assert off.numbers["vehicles"] == 2 and off.numbers["trips"] == 4 and off.numbers["holiday_km"] == 20
    assert off.numbers["holiday_h"] == 2.0 and off.numbers["after_hours_h"] == 1.5
    assert "2 辆车有 4 次出车" in off.text_zh and "法定节假日行驶 20.0 公里" in off.text_zh
    assert all(f.text_zh and f.text_en for f in advice)


def test_over_used_vehicle() -> None:
    heavy = {"a1": [trip(d, 8, 17, 90, 30, 30) for d in range(9, 15)]}  # 9 h a working day: 300 %
    advice = findings(compute(VEHICLES[:1], heavy, START_MS, END_MS, CAL, POLICY), POLICY)
    (over,) = [f for f in advice if f.key == "over_used"]
    assert over.numbers["target_ratio_pct"] == 300.0
    named = [Vehicle("a1", "agency A 公务车 a1", "A", "agency A", "c1", "city c1")]  # the name says whose it is
    (over,) = [
        f for f in findings(compute(named, heavy, START_MS, END_MS, CAL, POLICY), POLICY) if f.key == "over_used"
    ]
    assert over.text_zh.startswith("agency A 公务车 a1使用强度高") and over.text_en.startswith("agency A 公务车 a1 is")


def test_a_trip_across_the_period_start_is_clipped_and_not_counted() -> None:
    seg = Segment("trip", START_MS - 3_600_000, START_MS + 3_600_000, (0, 0), (0, 0), 20_000)
    stop = Segment("stop", START_MS, START_MS + 1000, (0, 0), (0, 0), 0)
    assert clip([seg, stop], START_MS, END_MS) == [(START_MS, START_MS + 3_600_000, 10_000, False)]
    (u,) = compute(VEHICLES[:1], {"a1": [seg]}, START_MS, END_MS, CAL, POLICY).usages
    assert (u.trips, u.km, u.engine_s, u.non_working_s, u.off_hours_trips) == (0, 10, 3600, 0, 0)
    assert u.after_hours_s == 3600  # Monday 00:00-01:00 is after hours of a working day


def test_a_calendar_extra_day_off_of_a_region_applies_to_its_vehicles() -> None:
    cal = Calendar(extra_days_off={"A": {START.date()}})
    (u,) = compute(VEHICLES[:1], {"a1": [trip(9, 9, 12, 30)]}, START_MS, END_MS, cal, POLICY).usages
    assert (u.working_s, u.non_working_s, u.holiday_s, u.working_days) == (0, 3 * 3600, 0, 5)


def test_hour_of_week_hours() -> None:
    hours = hour_of_week_hours(START_MS, END_MS)
    assert sum(hours) == 8 * 24
    assert hours[0] == 2 and hours[24] == 1 and hours[6 * 24 + 23] == 1


@given(st.integers(0, 10 * 86_400_000), st.integers(1, 3 * 86_400_000))
def test_split_time_covers_the_interval_exactly(offset: int, length: int) -> None:
    a = START_MS - 86_400_000 + offset
    pieces = list(split_time(a, a + length, CAL, WorkingHours()))
    assert pieces[0][0] == a and pieces[-1][1] == a + length
    assert all(p[1] == q[0] and p[0] < p[1] for p, q in pairwise(pieces))
    assert all(p[1] - p[0] <= 3_600_000 and 0 <= p[2] < 168 for p in pieces)


@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), max_size=8),
        min_size=1,
        max_size=6,
    )
)
def test_concurrency_never_exceeds_the_fleet_and_matches_a_brute_force_count(
    fleet: list[list[tuple[int, int]]],
) -> None:
    # Each vehicle's trips as segment() makes them: ordered, never overlapping.
    intervals: list[tuple[int, int]] = []
    for gaps in fleet:
        t = 0
        for gap, length in gaps:
            intervals.append((t + gap, t + gap + length))
            t += gap + length
    peak, peak_at, steps = concurrency(intervals)
    assert 0 <= peak <= len(fleet)
    instants = {a for a, _ in intervals}
    brute = max((sum(a <= t < b for a, b in intervals) for t in instants), default=0)
    assert peak == brute
    if peak:
        assert peak_at is not None and sum(a <= peak_at < b for a, b in intervals) == peak
    covered = set().union(*(range(a, b) for a, b in intervals))
    assert math.isclose(time_at_or_above(steps, 1) * 1000, len(covered))
    assert math.isclose(time_at_or_above(steps, len(fleet) + 1), 0)


def test_policy_options_are_bounded() -> None:
    p = policy_from({"target_hours_per_workday": "4", "margin_min": 2, "working_hours": "09:00-18:00"})
    assert (p.target_hours_per_workday, p.margin_min, p.hours) == (4.0, 2, WorkingHours.parse("09:00-18:00"))
    for bad in ({"short_ratio": 0}, {"under_ratio": "x"}, {"margin_min": 5000}, {"working_hours": "9-"}):
        with pytest.raises(UserError):
            policy_from(bad)


def test_no_retirement_advice_for_a_city_without_any_use() -> None:
    fig = compute(VEHICLES[5:], {}, START_MS, END_MS, CAL, POLICY)  # c2's d1 and d2, no trips at all
    advice = findings(fig, POLICY)
    assert fig.cities[0].peak == 0 and not [f for f in advice if f.key == "retire"]
    assert sorted(str(f.numbers["vehicle"]) for f in advice if f.key == "under_used") == ["d1", "d2"]


@given(
    st.integers(0, 20 * 86_400_000),
    st.integers(1, 4 * 86_400_000),
    st.sampled_from(["08:30-17:30", "09:00-12:00", "22:00-06:00", "00:00-23:59"]),
)
def test_working_pieces_add_up_to_the_working_time_available(offset: int, length: int, text: str) -> None:
    hours = WorkingHours.parse(text)
    a = START_MS - 10 * 86_400_000 + offset  # from late January, across the Spring Festival holidays
    working_ms = sum(q - p for p, q, _, cls, _ in split_time(a, a + length, CAL, hours) if cls == "working")
    assert math.isclose(working_ms / 1000, available_working_s(a, a + length, CAL, hours)[0])
